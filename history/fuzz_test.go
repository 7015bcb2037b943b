package history

import (
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"
)

// named is a Source of one route with a name from the fuzzer.
type named string

func (n named) Sample(r *Recorder) { r.Set(Route, string(n), string(n), Req2xx, 1) }

// FuzzHistoryQuery: any query string and any series name give a 400 or a
// 200 whose body is JSON holding the series.
func FuzzHistoryQuery(f *testing.F) {
	for _, c := range [][2]string{
		{"", "/api/"},
		{"kind=route&since=1", "shop.example.com/"},
		{"since=x", "a\"b"},
		{"name=%00&kind=", "\x00\xff"},
		{"since=18446744073709551615", "\u2028"},
	} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, query, name string) {
		s, err := New(Config{Interval: time.Second, Points: 3, Sources: []Source{named(name)}})
		if err != nil {
			t.Fatal(err)
		}
		s.Sample(time.Now(), time.Second)
		s.Sample(time.Now(), time.Second)
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("GET", "/v1/pier/history", nil)
		req.URL.RawQuery = query
		s.Handler().ServeHTTP(rec, req)
		if rec.Code == 400 {
			return
		}
		if rec.Code != 200 {
			t.Fatalf("%q: %d", query, rec.Code)
		}
		var a answer
		if err := json.Unmarshal(rec.Body.Bytes(), &a); err != nil {
			t.Fatalf("%q: not JSON: %v\n%s", query, err, rec.Body)
		}
		q, _ := url.ParseQuery(query)
		if len(q) == 0 && (len(a.Series) != 1 || len(a.Series[0].Points) != 2) {
			t.Fatalf("no filter: %+v", a)
		}
	})
}
