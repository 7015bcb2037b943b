package raft

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"testing"
)

// A snapshot archive holds Consul's three files and restores the state it
// was taken from, size included; a tampered or foreign archive is refused
// before Raft sees it.
func TestSnapshotArchive(t *testing.T) {
	n := singleServer(t).n
	for _, k := range []string{"a", "bb"} {
		if _, err := n.KV(KVOp{Verb: KVSet, Key: k, Value: []byte("value")}); err != nil {
			t.Fatal(err)
		}
	}
	if got := n.State().KVBytes(); got != 13 {
		t.Fatalf("KVBytes = %d, want 13", got)
	}
	var buf bytes.Buffer
	idx, err := n.SaveSnapshot(&buf)
	if err != nil || idx == 0 {
		t.Fatalf("save: %d %v", idx, err)
	}
	archive := buf.Bytes()
	gz, err := gzip.NewReader(bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
	if len(names) != 3 || names[0] != "meta.json" || names[1] != "state.bin" || names[2] != "SHA256SUMS" {
		t.Fatalf("archive holds %v", names)
	}

	if _, err := n.KV(KVOp{Verb: KVDelete, Key: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := n.RestoreSnapshot(bytes.NewReader(archive)); err != nil {
		t.Fatal(err)
	}
	if _, ok := n.State().KV("a"); !ok || n.State().KVBytes() != 13 {
		t.Fatalf("after restore: a present %v, KVBytes %d", ok, n.State().KVBytes())
	}

	// The same files with state.bin changed: the checksum no longer holds.
	bad := rewrite(t, archive, func(name string, b []byte) []byte {
		if name == "state.bin" {
			return bytes.Replace(b, []byte(`"Key":"a"`), []byte(`"Key":"z"`), 1)
		}
		return b
	})
	for name, in := range map[string][]byte{"tampered": bad, "garbage": []byte("not gzip"), "empty": nil} {
		if err := n.RestoreSnapshot(bytes.NewReader(in)); !errors.Is(err, ErrBadSnapshot) {
			t.Errorf("%s archive: %v, want ErrBadSnapshot", name, err)
		}
	}
	if _, ok := n.State().KV("z"); ok {
		t.Fatal("a refused archive changed the state")
	}
}

// rewrite copies an archive with each file's content passed through f.
func rewrite(t *testing.T, archive []byte, f func(string, []byte) []byte) []byte {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var out bytes.Buffer
	gw := gzip.NewWriter(&out)
	tw := tar.NewWriter(gw)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		b = f(h.Name, b)
		h.Size = int64(len(b))
		tw.WriteHeader(h)
		tw.Write(b)
	}
	tw.Close()
	gw.Close()
	return out.Bytes()
}
