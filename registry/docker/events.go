package docker

import (
	"encoding/json"
	"errors"
	"io"
)

// event is one message of the engine's /events stream. Engines before API
// 1.22 sent only status and id; newer ones send Action and Actor too.
type event struct {
	Type   string
	Action string
	Status string `json:"status"`
	ID     string `json:"id"`
	Actor  struct {
		ID         string
		Attributes map[string]string
	}
}

// decodeEvents reads the stream of JSON objects from r and calls fn with
// each container event that names a container, until r ends, fails or fn
// returns an error. A stream that ends is an error too: the engine closes
// it only when it stops.
func decodeEvents(r io.Reader, fn func(event) error) error {
	dec := json.NewDecoder(r)
	for {
		var e event
		if err := dec.Decode(&e); err != nil {
			if errors.Is(err, io.EOF) {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		if e.Action == "" {
			e.Action = e.Status
		}
		if e.Actor.ID == "" {
			e.Actor.ID = e.ID
		}
		if e.Actor.ID == "" || e.Type != "" && e.Type != "container" {
			continue
		}
		if err := fn(e); err != nil {
			return err
		}
	}
}
