package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	consul "github.com/hashicorp/consul/api"

	"github.com/pier-dev/pier/registry/raft"
)

// pier snapshot save and restore are consul snapshot's: an archive of the
// servers' agreed state (KV, sessions, external nodes), taken from and
// given to the leader through /v1/snapshot.

func runSnapshot(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{"give a subcommand: save or restore"}
	}
	switch args[0] {
	case "save":
		return snapshotSave(args[1:], stdout, stderr)
	case "restore":
		return snapshotRestore(args[1:], stdout, stderr)
	}
	return usageError{fmt.Sprintf("unknown snapshot subcommand %q: want save or restore", args[0])}
}

// snapshotFile is the one FILE argument of save and restore.
func snapshotFile(args []string) (string, error) {
	switch len(args) {
	case 0:
		return "", usageError{"Missing FILE argument"}
	case 1:
		return args[0], nil
	}
	return "", usageError{fmt.Sprintf("Too many arguments (expected 1, got %d)", len(args))}
}

// snapshotSave writes the archive to FILE.unverified, checks it as a
// restore would, and only then renames it to FILE, as consul snapshot save.
func snapshotSave(args []string, stdout, stderr io.Writer) error {
	var stale bool
	fs, c, _, err := apiCommand("snapshot save", args, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&stale, "stale", false, "let any server answer, not only the leader (its state may lag)")
	})
	if err != nil {
		return err
	}
	file, err := snapshotFile(fs.Args())
	if err != nil {
		return err
	}
	cc, err := c.consul()
	if err != nil {
		return err
	}
	snap, qm, err := cc.Snapshot().Save(&consul.QueryOptions{AllowStale: stale})
	if err != nil {
		return fmt.Errorf("saving the snapshot: %w", c.consulErr(err))
	}
	defer snap.Close()
	tmp := file + ".unverified"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(tmp) // gone once renamed; left over only on an error
	if _, err := io.Copy(f, snap); err != nil {
		f.Close()
		return fmt.Errorf("saving the snapshot: %w", c.consulErr(err))
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	f, err = os.Open(tmp)
	if err != nil {
		return err
	}
	_, err = raft.VerifySnapshot(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("verifying the snapshot: %w", err)
	}
	if err := os.Rename(tmp, file); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Saved and verified snapshot to index %d\n", qm.LastIndex)
	return nil
}

func snapshotRestore(args []string, stdout, stderr io.Writer) error {
	fs, c, _, err := apiCommand("snapshot restore", args, stderr, nil)
	if err != nil {
		return err
	}
	file, err := snapshotFile(fs.Args())
	if err != nil {
		return err
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	cc, err := c.consul()
	if err != nil {
		return err
	}
	if err := cc.Snapshot().Restore(nil, f); err != nil {
		return fmt.Errorf("restoring the snapshot: %w", c.consulErr(err))
	}
	fmt.Fprintln(stdout, "Restored snapshot")
	return nil
}
