package raft

import (
	"bytes"
	"fmt"
	"io"
)

// VerifySnapshot checks an archive as RestoreSnapshot does (the checksums,
// then every record of the state) without restoring it, and answers the
// log index it holds: `pier snapshot save` keeps a file only once it
// verifies, as `consul snapshot save` does. Errors wrap ErrBadSnapshot.
func VerifySnapshot(r io.Reader) (uint64, error) {
	meta, state, err := readArchive(r)
	if err != nil {
		return 0, err
	}
	if err := NewFSM(nil).Restore(io.NopCloser(bytes.NewReader(state))); err != nil {
		return 0, fmt.Errorf("%w: %v", ErrBadSnapshot, err)
	}
	return meta.Index, nil
}
