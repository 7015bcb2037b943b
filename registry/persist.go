package registry

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// store keeps this node's API registrations in the data dir, one file per
// service or check (as Consul does), so a registration costs one small
// write rather than a rewrite of the whole catalog.
type store struct {
	dir string
}

type persisted struct {
	Service Service
	Checks  []Check `json:",omitempty"`
	Version uint64  `json:",omitempty"` // the clock when written: versions never go back
}

type persistedCheck struct {
	Check Check
}

// openStore makes the data dir only. Its subdirectories (services, checks,
// checks/state, kv) are made by the first write into each: a new inode on
// ext4 costs some 0.3 ms of CPU, most agents never persist a registration
// or a KV key, and making all five at every start was a tenth of what
// starting an agent cost (deploy/bench/gossip.sh starts 99 at once).
func openStore(dir string) (*store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("registry: data dir: %w", err)
	}
	return &store{dir: dir}, nil
}

// createFile opens path for writing, truncated, making its directory (and
// that directory's parents) first when it does not exist yet.
func createFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if errors.Is(err, fs.ErrNotExist) {
		if err = makeDir(filepath.Dir(path)); err == nil {
			f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		}
	}
	return f, err
}

// makeDir makes dir and the parents it lacks, syncing each parent so that
// the new directory survives a crash as the files written into it do.
func makeDir(dir string) error {
	parent := filepath.Dir(dir)
	if _, err := os.Stat(parent); errors.Is(err, fs.ErrNotExist) && parent != dir {
		if err := makeDir(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(parent)
}

// fileName hashes the ID: IDs may hold any character, file names may not.
func fileName(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:16]) + ".json"
}

func (s *store) servicePath(id string) string {
	return filepath.Join(s.dir, "services", fileName(id))
}

func (s *store) checkPath(id string) string {
	return filepath.Join(s.dir, "checks", fileName(id))
}

func (s *store) saveService(p persisted) error {
	return writeJSON(s.servicePath(p.Service.ID), p)
}

func (s *store) removeService(id string) error {
	return removeFile(s.servicePath(id))
}

func (s *store) saveCheck(p persistedCheck) error {
	return writeJSON(s.checkPath(p.Check.CheckID), p)
}

func (s *store) removeCheck(id string) error {
	return removeFile(s.checkPath(id))
}

// load reads every persisted registration. A file that cannot be read or
// decoded stops the agent with its name: an empty catalog that silently
// replaced a damaged one would be worse.
func (s *store) load() ([]persisted, []persistedCheck, error) {
	var svcs []persisted
	err := readDir(filepath.Join(s.dir, "services"), func(path string, b []byte) error {
		var p persisted
		if err := json.Unmarshal(b, &p); err != nil {
			return err
		}
		if p.Service.ID == "" || p.Service.Name == "" {
			return errors.New("service without ID or Name")
		}
		svcs = append(svcs, p)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	var checks []persistedCheck
	err = readDir(filepath.Join(s.dir, "checks"), func(path string, b []byte) error {
		var p persistedCheck
		if err := json.Unmarshal(b, &p); err != nil {
			return err
		}
		if p.Check.CheckID == "" {
			return errors.New("check without CheckID")
		}
		checks = append(checks, p)
		return nil
	})
	return svcs, checks, err
}

// readDir calls fn for every state file in dir; a dir not made yet (no
// file was ever written there) holds none.
func readDir(dir string, fn func(path string, b []byte) error) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("registry: reading %s: %w", dir, err)
	}
	for _, e := range ents {
		name := e.Name()
		path := filepath.Join(dir, name)
		if strings.HasSuffix(name, ".tmp") {
			os.Remove(path) // a write that never reached its rename
			continue
		}
		if e.IsDir() || !strings.HasSuffix(name, ".json") {
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("registry: reading state file %s: %w", path, err)
		}
		if err := fn(path, b); err != nil {
			return fmt.Errorf("registry: corrupt state file %s: %v (fix or remove it)", path, err)
		}
	}
	return nil
}

// nodeID returns the node ID kept in the data dir, making one the first time.
func (s *store) nodeID() (string, error) {
	path := filepath.Join(s.dir, "node-id")
	b, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if !validUUID(id) {
			return "", fmt.Errorf("registry: corrupt state file %s: %q is not a UUID (fix or remove it)", path, id)
		}
		return strings.ToLower(id), nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("registry: reading %s: %w", path, err)
	}
	id := NewUUID()
	if err := writeFile(path, []byte(id+"\n")); err != nil {
		return "", err
	}
	return id, nil
}

func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("registry: encoding %s: %w", path, err)
	}
	return writeFile(path, b)
}

// writeFile replaces path atomically: a crash leaves the old file or the new
// one, never a torn one.
func writeFile(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := createFile(tmp)
	if err != nil {
		return fmt.Errorf("registry: writing %s: %w", path, err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("registry: writing %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

func removeFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("registry: removing %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

// syncDir makes a rename or removal durable. A directory that was never
// made has nothing to make durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("registry: syncing %s: %w", dir, err)
	}
	return nil
}

// NewUUID answers a random (version 4) UUID.
func NewUUID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// ParseNodeID checks a node ID as Consul does (a UUID, 8-4-4-4-12 hex
// digits) and returns it in lower case, as Consul keeps it.
func ParseNodeID(s string) (string, error) {
	if !validUUID(s) {
		return "", &FieldError{Field: "node_id", Msg: fmt.Sprintf("%q is not a UUID (8-4-4-4-12 hex digits, such as %s)", s, NewUUID())}
	}
	return strings.ToLower(s), nil
}

func validUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, r := range s {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
				return false
			}
		}
	}
	return true
}
