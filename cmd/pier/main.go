// Command pier is one binary for service discovery and the front door of a
// container fleet: every node runs "pier agent"; the other subcommands talk
// to the local agent over its HTTP API.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

type command struct {
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

func commands() map[string]command {
	return map[string]command{
		"agent":      {"Run a pier agent", runAgent},
		"services":   {"List the services in the catalog", runServices},
		"catalog":    {"consul catalog's forms: catalog datacenters, nodes [-service], services [-node] [-tags]", runCatalog},
		"register":   {"Register a service with the local agent", runRegister},
		"deregister": {"Deregister a service from the local agent", runDeregister},
		"members":    {"List the members of the cluster", runMembers},
		"routes":     {"List the front-door proxy's routes and their instances", runRoutes},
		"join":       {"Tell the local agent to join a cluster", runJoin},
		"leave":      {"Make the local agent leave the cluster gracefully and stop", runLeave},
		"reload":     {"Make the local agent read its config files again (services, checks, log level)", runReload},
		"keygen":     {"Print a new gossip encryption key", runKeygen},
		"keyring":    {"Rotate the gossip encryption key of the whole cluster", runKeyring},
		"validate":   {"Check config files without starting an agent", runValidate},
		"kv":         {"Read and write the replicated key/value store: get, put, delete, list, export, import", runKV},
		"acl":        {"Manage API tokens, policies and roles: acl bootstrap; acl policy|role|token create, list, read, delete; acl role|token update", runACL},
		"monitor":    {"Stream the local agent's log as it is written (-log-level, -log-json), as consul monitor", runMonitor},
		"maint":      {"Put a service or the node in maintenance mode, or take it out", runMaint},
		"lock":       {"Run a command while holding a lock (-n N: a semaphore) in the KV store, as consul lock", runLock},
		"snapshot":   {"Save the servers' agreed state to a file, or restore it: snapshot save|restore FILE", runSnapshot},
		"operator":   {"The servers' Raft group: operator raft list-peers, operator raft remove-peer -id=X|-address=Y", runOperator},
		"version":    {"Print the version of pier and of the local agent", runVersion},
	}
}

// usageError is a mistake on the command line: exit code 2, as flag uses.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "-v" || args[0] == "--version" || args[0] == "-version" {
		args[0] = "version"
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "pier: unknown command %q (run pier -h for the list)\n", args[0])
		return 2
	}
	err := cmd.run(args[1:], stdout, stderr)
	var ue usageError
	var code exitCode
	switch {
	case err == nil:
		return 0
	case errors.As(err, &code):
		return int(code) // the command said what it had to
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "pier %s: %v\n", args[0], err)
		return 2
	default:
		fmt.Fprintf(stderr, "pier %s: %v\n", args[0], err)
		return 1
	}
}

func usage(w io.Writer, cmds map[string]command) {
	fmt.Fprintf(w, "Usage: pier <command> [flags]\n\nCommands:\n")
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-11s %s\n", n, cmds[n].summary)
	}
	fmt.Fprintf(w, "\nRun pier <command> -h for a command's flags. Flags take one dash or two.\n")
}

// exitCode ends pier with that code and no line of its own: pier lock
// exits with its command's code, which has spoken for itself.
type exitCode int

func (c exitCode) Error() string { return fmt.Sprintf("exit status %d", int(c)) }

// newFlagSet makes a FlagSet that reports errors instead of exiting, so that
// run decides the exit code and prints one line.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("pier "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// parseFlags parses args; -h prints the flags to stderr, and a bad flag
// becomes a one-line usageError.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	err := fs.Parse(args)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(stderr)
		fmt.Fprintf(stderr, "Usage of %s:\n", fs.Name())
		fs.PrintDefaults()
		return err
	}
	return usageError{err.Error() + " (run " + fs.Name() + " -h for its flags)"}
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return fmt.Sprint([]string(*s)) }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }
