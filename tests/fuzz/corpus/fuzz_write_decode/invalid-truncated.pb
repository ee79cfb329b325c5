
H
$00000000-0000-4000-8000-000000000000€ì¶ã¨¨˜news-service/1.4.2"t-1¼
¹
news-1ÿAPLApple beats â€” â€œestimatesâ€"re