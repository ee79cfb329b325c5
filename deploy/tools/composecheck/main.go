// composecheck loads a compose file the way Docker Compose v2 does
// (github.com/compose-spec/compose-go: the Compose Specification schema,
// interpolation, then the consistency checks: unknown services in depends_on,
// undefined volumes and networks, durations, ...), offline, without a Docker
// engine. It prints one line per problem and exits 1 on any.
//
//	composecheck -f docker-compose.yml [-env-file FILE] [-project-directory DIR] [-q]
//
// Without -q it prints the loaded project as YAML (as `docker compose config`).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	file := flag.String("f", "docker-compose.yml", "compose file")
	envFile := flag.String("env-file", "", "variables for interpolation (as docker compose --env-file)")
	quiet := flag.Bool("q", false, "only validate")
	projectDir := flag.String("project-directory", "", "directory relative paths start from (default: the file's)")
	flag.Parse()

	if *projectDir == "" {
		*projectDir = filepath.Dir(*file)
	}
	dir, err := filepath.Abs(*projectDir)
	if err != nil {
		fail(err)
	}
	opts := []cli.ProjectOptionsFn{
		cli.WithWorkingDirectory(dir),
		cli.WithName("catalyst"),
		cli.WithConsistency(true),
		cli.WithInterpolation(true),
		cli.WithResolvedPaths(true),
	}
	if *envFile != "" {
		opts = append(opts, cli.WithEnvFiles(*envFile))
	}
	opts = append(opts, cli.WithDotEnv)
	options, err := cli.NewProjectOptions([]string{*file}, opts...)
	if err != nil {
		fail(err)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	if *quiet {
		return
	}
	out, err := project.MarshalYAML()
	if err != nil {
		fail(err)
	}
	os.Stdout.Write(out)
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "composecheck: %v\n", err)
	os.Exit(1)
}
