package metrics

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"time"
)

// ConsulStreamHandler serves /v1/agent/metrics/stream as Consul does: one
// JSON object of /v1/agent/metrics's shape per interval (Consul's is 10 s),
// until the client goes away; `consul debug` records it. The first object
// is sent at once rather than after the first interval, so a short capture
// still gets one. Each object is what summary (ConsulHandler) answers at
// that moment, so the two endpoints never differ in shape.
func ConsulStreamHandler(summary http.Handler, interval time.Duration, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		if rc.Flush() != nil {
			return
		}
		// The summary is asked for as JSON, whatever this request's query.
		sr := r.Clone(r.Context())
		sr.URL.RawQuery = ""
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			rec := &recorder{h: http.Header{}, code: http.StatusOK}
			summary.ServeHTTP(rec, sr)
			if rec.code != http.StatusOK {
				log.Warn("metrics stream: the summary failed", "status", rec.code, "body", rec.buf.String())
				return
			}
			var out bytes.Buffer
			if json.Indent(&out, rec.buf.Bytes(), "", "    ") != nil {
				out = rec.buf
			}
			if _, err := w.Write(out.Bytes()); err != nil || rc.Flush() != nil {
				return
			}
			select {
			case <-r.Context().Done():
				return
			case <-tick.C:
			}
		}
	})
}

// recorder keeps one answer of the summary handler in memory.
type recorder struct {
	h    http.Header
	code int
	buf  bytes.Buffer
}

func (r *recorder) Header() http.Header         { return r.h }
func (r *recorder) WriteHeader(code int)        { r.code = code }
func (r *recorder) Write(b []byte) (int, error) { return r.buf.Write(b) }
