package history

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/pier-dev/pier/registry/acl"
)

// Handler serves GET /v1/pier/history: the points of many series in one
// answer, so that a page with 200 routes asks once.
//
//	?kind=route,service  only these kinds (default: all)
//	?name=a&name=b       only these series names (default: all)
//	?since=T             only points after tick T (the Tick of an earlier answer)
//
// With ACLs on, it answers only the series whose service or node the
// request's token may read.
func (s *Store) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var since uint64
		if v := q.Get("since"); v != "" {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				w.WriteHeader(http.StatusBadRequest)
				w.Write([]byte("since: not a tick number: " + strconv.Quote(v) + "\n"))
				return
			}
			since = n
		}
		var kinds []string
		if v := q.Get("kind"); v != "" {
			kinds = strings.Split(v, ",")
		}
		f := filter{kinds: kinds, names: q["name"], policy: acl.PolicyOf(r), since: since}
		buf := bufs.Get().(*[]byte)
		b := s.AppendJSON((*buf)[:0], f)
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
		*buf = b
		bufs.Put(buf)
	})
}

var bufs = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

// filter is what one request asks for.
type filter struct {
	kinds  []string
	names  []string
	policy *acl.Policy // nil: ACLs off
	since  uint64
}

func (f *filter) want(se *series) bool {
	if len(f.kinds) > 0 && !contains(f.kinds, string(se.kind)) {
		return false
	}
	if len(f.names) > 0 && !contains(f.names, se.name) {
		return false
	}
	if f.policy == nil {
		return true
	}
	if se.kind == Node {
		return f.policy.NodeRead(se.owner)
	}
	return f.policy.ServiceRead(se.owner)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// AppendJSON appends the answer to b:
//
//	{"Interval":5,"Points":180,"Tick":T,"Time":ms,"Fields":{...},
//	 "Series":[{"Kind":"route","Name":"*/api/","Owner":"api","First":F,"Points":[[...],...]}]}
//
// Points run from tick First to Tick, oldest first; a value not measured
// is null. It is written by hand: it is the UI's most frequent request and
// encoding/json would box every number.
func (s *Store) AppendJSON(b []byte, f filter) []byte {
	s.mu.RLock()
	defer s.mu.RUnlock()
	b = append(b, `{"Interval":`...)
	b = strconv.AppendFloat(b, s.cfg.Interval.Seconds(), 'g', -1, 64)
	b = append(b, `,"Points":`...)
	b = strconv.AppendInt(b, int64(s.cfg.Points), 10)
	b = append(b, `,"Tick":`...)
	b = strconv.AppendUint(b, s.tick, 10)
	b = append(b, `,"Time":`...)
	if s.tick > 0 {
		b = strconv.AppendInt(b, s.at.UnixMilli(), 10)
	} else {
		b = append(b, '0')
	}
	b = append(b, `,"Fields":{`...)
	for i, k := range []Kind{Route, Service, Node} {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, string(k))
		b = append(b, ":["...)
		for j, name := range FieldNames[k] {
			if j > 0 {
				b = append(b, ',')
			}
			b = appendString(b, name)
		}
		b = append(b, ']')
	}
	b = append(b, `},"Series":[`...)
	points := uint64(s.cfg.Points)
	oldest := uint64(1)
	if s.tick >= points {
		oldest = s.tick - points + 1
	}
	n := 0
	for _, se := range s.sorted {
		if !f.want(se) {
			continue
		}
		first := max(se.first, oldest, f.since+1)
		if n > 0 {
			b = append(b, ',')
		}
		n++
		b = append(b, `{"Kind":`...)
		b = appendString(b, string(se.kind))
		b = append(b, `,"Name":`...)
		b = appendString(b, se.name)
		b = append(b, `,"Owner":`...)
		b = appendString(b, se.owner)
		b = append(b, `,"First":`...)
		b = strconv.AppendUint(b, first, 10)
		b = append(b, `,"Points":[`...)
		nf := fieldCount(se.kind)
		for t := first; t <= s.tick; t++ {
			if t > first {
				b = append(b, ',')
			}
			b = append(b, '[')
			slot := int(t%points) * nf
			for i, v := range se.vals[slot : slot+nf] {
				if i > 0 {
					b = append(b, ',')
				}
				if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
					b = append(b, "null"...)
				} else {
					b = strconv.AppendFloat(b, float64(v), 'g', 4, 32)
				}
			}
			b = append(b, ']')
		}
		b = append(b, "]}"...)
	}
	return append(b, "]}"...)
}

// appendString appends s as a JSON string: strconv's quoting writes \x
// escapes, which JSON has not.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b = append(b, '\\', byte(r))
		case r < 0x20 || r == 0x2028 || r == 0x2029:
			b = append(b, '\\', 'u', hex[r>>12&15], hex[r>>8&15], hex[r>>4&15], hex[r&15])
		default:
			b = utf8.AppendRune(b, r) // an invalid byte becomes U+FFFD
		}
	}
	return append(b, '"')
}
