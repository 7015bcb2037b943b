package raft

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	hraft "github.com/hashicorp/raft"
)

// What the API needs of a server beyond the state machine: operator
// snapshots in Consul's archive layout, and the few facts the operator
// endpoints show.

// The snapshot archive is Consul's layout, so that `consul snapshot save`
// verifies what it gets: a gzipped tar holding meta.json (hashicorp/raft's
// SnapshotMeta as JSON), state.bin (the state machine's own snapshot:
// pier's JSON stream, not Consul's msgpack, so the archive restores into
// pier only) and SHA256SUMS (sha256sum's format over the other two).
const (
	archiveMeta  = "meta.json"
	archiveState = "state.bin"
	archiveSums  = "SHA256SUMS"
)

// MaxSnapshotSize bounds an archive's state read on restore (it is held
// in memory to be checked before Raft sees it).
const MaxSnapshotSize = 1 << 30

// ErrBadSnapshot is an archive that does not read; nothing was restored.
var ErrBadSnapshot = errors.New("raft: not a pier snapshot archive")

// SaveSnapshot takes a snapshot of this server's state and writes it to w
// as an archive; it answers the log index the snapshot holds.
func (n *Node) SaveSnapshot(w io.Writer) (uint64, error) {
	f := n.raft.Snapshot()
	if err := f.Error(); err != nil {
		return 0, fmt.Errorf("raft: taking a snapshot: %w", err)
	}
	meta, rc, err := f.Open()
	if err != nil {
		return 0, fmt.Errorf("raft: opening the snapshot: %w", err)
	}
	defer rc.Close()
	mb, err := json.Marshal(meta)
	if err != nil {
		return 0, fmt.Errorf("raft: snapshot meta: %w", err)
	}
	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	now := time.Now()
	sums := map[string][]byte{}
	add := func(name string, size int64, r io.Reader) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: size, ModTime: now}); err != nil {
			return err
		}
		h := sha256.New()
		if _, err := io.CopyN(tw, io.TeeReader(r, h), size); err != nil {
			return err
		}
		sums[name] = h.Sum(nil)
		return nil
	}
	if err := add(archiveMeta, int64(len(mb)), bytes.NewReader(mb)); err != nil {
		return 0, fmt.Errorf("raft: writing the snapshot: %w", err)
	}
	if err := add(archiveState, meta.Size, rc); err != nil {
		return 0, fmt.Errorf("raft: writing the snapshot: %w", err)
	}
	var sb bytes.Buffer
	for _, name := range []string{archiveMeta, archiveState} {
		fmt.Fprintf(&sb, "%x  %s\n", sums[name], name)
	}
	if err := add(archiveSums, int64(sb.Len()), &sb); err != nil {
		return 0, fmt.Errorf("raft: writing the snapshot: %w", err)
	}
	if err := tw.Close(); err != nil {
		return 0, fmt.Errorf("raft: writing the snapshot: %w", err)
	}
	if err := gz.Close(); err != nil {
		return 0, fmt.Errorf("raft: writing the snapshot: %w", err)
	}
	return meta.Index, nil
}

// RestoreSnapshot replaces the agreed state with an archive's, on every
// server (hashicorp/raft's user restore); leader only. The archive is read
// and checked whole first: hashicorp/raft stops the process if the state
// machine cannot restore what it was handed. Errors wrapping
// ErrBadSnapshot are the caller's.
func (n *Node) RestoreSnapshot(r io.Reader) error {
	if !n.IsLeader() {
		return n.leaderErr()
	}
	meta, state, err := readArchive(r)
	if err != nil {
		return err
	}
	if err := NewFSM(nil).Restore(io.NopCloser(bytes.NewReader(state))); err != nil {
		return fmt.Errorf("%w: %v", ErrBadSnapshot, err)
	}
	meta.Size = int64(len(state))
	if err := n.raft.Restore(meta, bytes.NewReader(state), n.cfg.ApplyTimeout); err != nil {
		return fmt.Errorf("raft: restore: %w", err)
	}
	// The sessions are the restored ones: their TTLs start afresh, as
	// after an election.
	if n.IsLeader() {
		n.timers.stop()
		n.timers.lead(n.fsm.State())
	}
	return nil
}

func readArchive(r io.Reader) (*hraft.SnapshotMeta, []byte, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrBadSnapshot, fmt.Sprintf(format, args...))
	}
	gz, err := gzip.NewReader(r)
	if err != nil {
		return nil, nil, bad("%v", err)
	}
	defer gz.Close()
	tr := tar.NewReader(gz)
	var meta hraft.SnapshotMeta
	var state, sums []byte
	seen := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, bad("%v", err)
		}
		b, err := io.ReadAll(io.LimitReader(tr, MaxSnapshotSize+1))
		if err != nil {
			return nil, nil, bad("%s: %v", h.Name, err)
		}
		if len(b) > MaxSnapshotSize {
			return nil, nil, bad("%s is larger than %d bytes", h.Name, MaxSnapshotSize)
		}
		switch h.Name {
		case archiveMeta:
			if err := json.Unmarshal(b, &meta); err != nil {
				return nil, nil, bad("%s: %v", archiveMeta, err)
			}
		case archiveState:
			state = b
		case archiveSums:
			sums = b
			continue
		default:
			return nil, nil, bad("unexpected file %q", h.Name)
		}
		s := sha256.Sum256(b)
		seen[h.Name] = s[:]
	}
	if seen[archiveMeta] == nil || seen[archiveState] == nil || sums == nil {
		return nil, nil, bad("it needs %s, %s and %s", archiveMeta, archiveState, archiveSums)
	}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		want, err := hex.DecodeString(sum)
		if !ok || err != nil {
			return nil, nil, bad("%s: malformed line %q", archiveSums, line)
		}
		got, ok := seen[name]
		if !ok || !bytes.Equal(got, want) {
			return nil, nil, bad("the checksum of %q does not match", name)
		}
		checked++
	}
	if checked != len(seen) {
		return nil, nil, bad("%s does not cover every file", archiveSums)
	}
	return &meta, state, nil
}

// LockDelayed reports whether key is within a lock delay on this server
// (the leader checks before it proposes a lock, as Consul's).
func (n *Node) LockDelayed(key string) bool { return !n.fsm.LockDelay(key).IsZero() }

// LastIndex is the index of this server's last log entry.
func (n *Node) LastIndex() uint64 { return n.raft.LastIndex() }

// LastContactKnown is LastContact as Consul's X-Consul-LastContact: zero
// on the leader, and whether this server has heard from one at all.
func (n *Node) LastContactKnown() (time.Duration, bool) {
	if n.raft.State() == hraft.Leader {
		return 0, true
	}
	t := n.raft.LastContact()
	if t.IsZero() {
		return 0, false
	}
	return time.Since(t), true
}

// RemoveServerByAddress removes the server at addr; leader only.
func (n *Node) RemoveServerByAddress(addr string) error {
	servers, err := n.Configuration()
	if err != nil {
		return err
	}
	for _, s := range servers {
		if s.Address == addr {
			return n.RemoveServer(s.ID)
		}
	}
	return fmt.Errorf("address %q was not found in the Raft configuration", addr)
}

// ProtocolVersion is the Raft protocol this server speaks, as Consul's
// raft_vsn tag.
func (n *Node) ProtocolVersion() string {
	return strconv.Itoa(int(hraft.ProtocolVersionMax))
}
