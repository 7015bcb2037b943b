package main

import (
	"fmt"
	"io"
	"os"
)

// runValidate checks config files and directories the way the agent reads
// them, without starting anything, as consul validate does.
func runValidate(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("validate")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usageError{"give the config files or directories to check"}
	}
	f := newAgentFlags()
	for _, p := range fs.Args() {
		if isDir(p) {
			f.configDirs = append(f.configDirs, p)
		} else {
			f.configFiles = append(f.configFiles, p)
		}
	}
	if _, err := f.resolve(); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "Configuration is valid!")
	return nil
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}
