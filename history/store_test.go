package history

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// routes is a Source of n routes whose values are the tick, so a test can
// tell which point is which.
type routes struct {
	n    int
	tick float64
}

func (s *routes) Sample(r *Recorder) {
	s.tick++
	for i := range s.n {
		name := fmt.Sprintf("*/r%03d/", i)
		r.Set(Route, name, "svc", Req2xx, s.tick)
		r.Set(Route, name, "svc", P99, math.NaN())
		r.Set(Service, fmt.Sprintf("svc%03d", i), "svc", Healthy, 3)
	}
}

type answer struct {
	Interval float64
	Tick     uint64
	Fields   map[string][]string
	Series   []struct {
		Kind, Name, Owner string
		First             uint64
		Points            [][]*float64
	}
}

func get(t testing.TB, s *Store, query string) answer {
	t.Helper()
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/v1/pier/history"+query, nil))
	if rec.Code != 200 {
		t.Fatalf("%s: %d %s", query, rec.Code, rec.Body)
	}
	var a answer
	if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
		t.Fatalf("%s: not JSON: %v\n%s", query, err, rec.Body)
	}
	return a
}

func TestRingKeepsTheWindowAndForgetsWhatIsGone(t *testing.T) {
	src := &routes{n: 2}
	s, err := New(Config{Interval: time.Second, Points: 4, Sources: []Source{src}})
	if err != nil {
		t.Fatal(err)
	}
	if a := get(t, s, ""); a.Tick != 0 || len(a.Series) != 0 {
		t.Fatalf("before any point: %+v", a)
	}
	for range 6 {
		s.Sample(time.Now(), time.Second)
	}
	a := get(t, s, "?kind=route")
	if a.Tick != 6 || len(a.Series) != 2 || a.Interval != 1 {
		t.Fatalf("answer: %+v", a)
	}
	r := a.Series[0]
	if r.Name != "*/r000/" || r.Owner != "svc" || r.First != 3 || len(r.Points) != 4 {
		t.Fatalf("series: %+v", r)
	}
	for i, p := range r.Points {
		if len(p) != 6 || p[Req2xx] == nil || *p[Req2xx] != float64(3+i) || p[P99] != nil || p[Healthy] != nil {
			t.Errorf("point %d: %v", i, p)
		}
	}
	if got := a.Fields["route"]; len(got) != 6 || got[Req5xx] != "5xx" {
		t.Errorf("fields: %v", a.Fields)
	}
	// since: only the newer points.
	if a := get(t, s, "?kind=route&since=5&name=*/r001/"); len(a.Series) != 1 || a.Series[0].First != 6 || len(a.Series[0].Points) != 1 {
		t.Errorf("since=5: %+v", a)
	}
	if a := get(t, s, "?since=6"); len(a.Series) != 4 || len(a.Series[0].Points) != 0 {
		t.Errorf("since=now: %+v", a)
	}
	// A route that is gone loses its ring.
	src.n = 1
	s.Sample(time.Now(), time.Second)
	if a := get(t, s, "?kind=route"); len(a.Series) != 1 {
		t.Errorf("after a route went away: %d series", len(a.Series))
	}
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/v1/pier/history?since=x", nil))
	if rec.Code != http.StatusBadRequest {
		t.Errorf("since=x: %d", rec.Code)
	}
}

func TestNamesAreJSONStrings(t *testing.T) {
	for _, s := range []string{"plain", `q"u\o`, "\x00\x1f ctl", "ünï", "bad\xffbyte", "\u2028"} {
		var got string
		if err := json.Unmarshal(appendString(nil, s), &got); err != nil {
			t.Errorf("%q: %v", s, err)
		}
	}
}

func TestRunTakesAPointAtOnceAndStops(t *testing.T) {
	s, _ := New(Config{Interval: time.Hour, Points: 2, Sources: []Source{&routes{n: 1}}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for get(t, s, "").Tick == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil || get(t, s, "").Tick != 1 {
		t.Fatalf("Run: %v, tick %d", err, get(t, s, "").Tick)
	}
}

type broken struct{}

func (broken) Sample(*Recorder) { panic("broken source") }

func TestAPanickingSourceLosesItsPointOnly(t *testing.T) {
	s, _ := New(Config{Interval: time.Second, Points: 2, Sources: []Source{broken{}, &routes{n: 1}}})
	s.Sample(time.Now(), time.Second)
	if a := get(t, s, ""); a.Tick != 1 || len(a.Series) != 2 {
		t.Fatalf("after a panicking source: %+v", a)
	}
}
