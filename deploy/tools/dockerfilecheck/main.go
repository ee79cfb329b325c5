// dockerfilecheck parses a Dockerfile with BuildKit's own Dockerfile frontend
// (github.com/moby/buildkit/frontend/dockerfile: the parser, the instruction
// parser and its lint rules, as `docker build` reads the file), offline,
// without a Docker engine. Parse errors, parser warnings and lint findings
// are printed one per line and make it exit 1, as does a COPY --from naming
// no earlier stage.
//
//	dockerfilecheck Dockerfile
package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: dockerfilecheck Dockerfile")
		os.Exit(2)
	}
	path := os.Args[1]
	f, err := os.Open(path)
	if err != nil {
		fail(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		fail(fmt.Errorf("%s: %w", path, err))
	}
	problems := 0
	for _, w := range res.Warnings {
		line := 0
		if w.Location != nil {
			line = w.Location.Start.Line
		}
		fmt.Fprintf(os.Stderr, "%s:%d: %s\n", path, line, w.Short)
		problems++
	}
	lint := linter.New(&linter.Config{
		Warn: func(rule, description, url, msg string, location []parser.Range) {
			line := 0
			if len(location) > 0 {
				line = location[0].Start.Line
			}
			fmt.Fprintf(os.Stderr, "%s:%d: %s: %s\n", path, line, rule, msg)
			problems++
		},
	})
	stages, _, err := instructions.Parse(res.AST, lint)
	if err != nil {
		fail(fmt.Errorf("%s: %w", path, err))
	}
	if len(stages) == 0 {
		fail(fmt.Errorf("%s: no build stage", path))
	}
	// COPY --from names an earlier stage (an image reference has ':' or '/')
	seen := map[string]bool{}
	for i, st := range stages {
		for _, cmd := range st.Commands {
			if c, ok := cmd.(*instructions.CopyCommand); ok && c.From != "" {
				if !seen[strings.ToLower(c.From)] && !strings.ContainsAny(c.From, ":/") {
					if n, err := strconv.Atoi(c.From); err != nil || n >= i {
						fmt.Fprintf(os.Stderr, "%s:%d: COPY --from=%s: no earlier stage of that name\n",
							path, c.Location()[0].Start.Line, c.From)
						problems++
					}
				}
			}
		}
		seen[strings.ToLower(st.Name)] = true
	}
	if problems > 0 {
		os.Exit(1)
	}
	names := ""
	for _, s := range stages {
		names += " " + s.Name
	}
	fmt.Printf("dockerfilecheck: %s: %d stages (%s)\n", path, len(stages), names[1:])
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "dockerfilecheck: %v\n", err)
	os.Exit(1)
}
