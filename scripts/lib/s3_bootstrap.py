#!/usr/bin/env python3
"""Prepare a freshly started moto_server for scripts/stack.

moto keeps everything in memory, so this runs after every start:

 1. seed moto's random generator, so the IAM access key created below is the
    same after every restart of the emulator (workers keep working);
 2. while authentication is still off (moto's default), create an IAM user
    with an inline s3:* policy and an access key, and the bucket (signed
    with the key "bootstrap", the only one s3_server.py lets through until
    step 3, so other clients cannot disturb the seeded generator);
 3. switch authentication on: POST /moto-api/reset-auth with 0, which sets
    moto's INITIAL_NO_AUTH_ACTION_COUNT to 0 so every later request must
    carry a valid SigV4 signature of a known access key;
 4. check it: a request signed with the key succeeds, one signed with a wrong
    secret and one without any signature are refused.

Usage: s3_bootstrap.py ENDPOINT REGION BUCKET SEED KEYS_FILE
KEYS_FILE receives two lines, the access key id and the secret (mode 600).
"""

import json
import os
import sys
import urllib.error
import urllib.request

import boto3
import botocore.config
import botocore.exceptions

USER = "catalyst-stack"
POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}


def moto_api(endpoint, path, data):
    # not form-encoded, or moto sees an empty body
    req = urllib.request.Request(
        endpoint + path,
        data=data,
        method="POST",
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


def client(service, endpoint, region, key, secret):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=botocore.config.Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            connect_timeout=5,
            read_timeout=10,
        ),
    )


def refused(call):
    """Return the HTTP status of a call that must fail, or None if it succeeded."""
    try:
        call()
    except botocore.exceptions.ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]
    return None


def main(argv):
    if len(argv) != 6:
        print(__doc__.strip().splitlines()[-2], file=sys.stderr)
        return 2
    endpoint, region, bucket, seed, keys_file = argv[1:]

    moto_api(endpoint, "/moto-api/seed?a=" + str(int(seed)), b"")
    # authentication is off until reset-auth: any credentials do here
    iam = client("iam", endpoint, region, "bootstrap", "bootstrap")
    iam.create_user(UserName=USER)
    iam.put_user_policy(
        UserName=USER, PolicyName="s3-all", PolicyDocument=json.dumps(POLICY)
    )
    created = iam.create_access_key(UserName=USER)["AccessKey"]
    key, secret = created["AccessKeyId"], created["SecretAccessKey"]
    # with the bootstrap's credentials: s3_server.py serves no other until
    # authentication is on
    client("s3", endpoint, region, "bootstrap", "bootstrap").create_bucket(Bucket=bucket)

    moto_api(endpoint, "/moto-api/reset-auth", b"0")

    good = client("s3", endpoint, region, key, secret)
    good.put_object(Bucket=bucket, Key=".stack-check", Body=b"ok")
    if good.get_object(Bucket=bucket, Key=".stack-check")["Body"].read() != b"ok":
        print("s3 check: signed get returned other bytes", file=sys.stderr)
        return 1
    good.delete_object(Bucket=bucket, Key=".stack-check")

    bad = client("s3", endpoint, region, key, secret + "x")
    status = refused(lambda: bad.list_objects_v2(Bucket=bucket))
    if status != 403:
        print(f"s3 check: wrong secret not refused (got {status})", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(f"{endpoint}/{bucket}", timeout=10) as resp:
            print(f"s3 check: unsigned request got {resp.status}", file=sys.stderr)
            return 1
    except urllib.error.HTTPError as e:
        if e.code != 403:
            print(f"s3 check: unsigned request got {e.code}", file=sys.stderr)
            return 1

    fd = os.open(keys_file + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{key}\n{secret}\n")
    os.replace(keys_file + ".tmp", keys_file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
