// Command checker is the checked program of the docker check tests: run
// inside a container FROM scratch, it exits 0 when /ready exists, 1 when
// /warn does, and 2 otherwise, saying which on stdout and what it looked
// at on stderr. The tests flip its result with docker cp.
package main

import (
	"fmt"
	"os"
)

func main() {
	host, _ := os.Hostname()
	fmt.Fprintf(os.Stderr, "checker in %s\n", host)
	for _, f := range []struct {
		path string
		code int
	}{{"/ready", 0}, {"/warn", 1}} {
		if _, err := os.Stat(f.path); err == nil {
			fmt.Printf("found %s\n", f.path)
			os.Exit(f.code)
		}
	}
	fmt.Println("neither /ready nor /warn")
	os.Exit(2)
}
