package testregistry

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// Fault injection sits in front of the registry as an http.Handler: the
// registry itself stays unmodified and always answers correctly, and we
// change what reaches the client. Faults are keyed by digest and apply to
// successful GETs of a blob, or of a manifest (by digest, or by tag through
// the Docker-Content-Digest the registry answers with).

// CorruptBlob makes every GET of dgst serve each body byte inverted, with
// the registry's status and headers (length, digest) unchanged, as a bad
// disk or proxy would. ClearFaults undoes it.
func (r *Registry) CorruptBlob(dgst digest.Digest) {
	r.faults.mu.Lock()
	defer r.faults.mu.Unlock()
	r.faults.corrupt[dgst] = true
}

// TruncateAfter makes every GET response of dgst carry at most n body bytes
// and then cuts the connection (the client sees an unexpected EOF). A client
// that resumes with Range requests makes n bytes of progress per request; one
// that restarts from zero never finishes. ClearFaults undoes it.
func (r *Registry) TruncateAfter(dgst digest.Digest, n int) {
	r.TruncateAfterTimes(dgst, n, -1)
}

// TruncateAfterTimes is TruncateAfter for the next `times` responses of
// dgst only; later responses are whole. times < 0 means every response.
func (r *Registry) TruncateAfterTimes(dgst digest.Digest, n, times int) {
	r.faults.mu.Lock()
	defer r.faults.mu.Unlock()
	r.faults.truncate[dgst] = &truncation{n: n, left: times}
}

// SlowBlobs limits the body of every blob and manifest GET to bytesPerSec
// (per response). 0 removes the limit.
func (r *Registry) SlowBlobs(bytesPerSec int) {
	r.faults.mu.Lock()
	defer r.faults.mu.Unlock()
	r.faults.bytesPerSec = bytesPerSec
}

// ClearFaults removes the corruption and truncation of the given digests,
// or of every digest and the speed limit when none is given. Request counts
// stay.
func (r *Registry) ClearFaults(dgsts ...digest.Digest) {
	r.faults.mu.Lock()
	defer r.faults.mu.Unlock()
	if len(dgsts) == 0 {
		clear(r.faults.corrupt)
		clear(r.faults.truncate)
		r.faults.bytesPerSec = 0
		return
	}
	for _, d := range dgsts {
		delete(r.faults.corrupt, d)
		delete(r.faults.truncate, d)
	}
}

// Requests is how many GETs of dgst reached the registry, counting every
// answer except 401 (an auth challenge is not a download attempt: clients
// send one unauthenticated request before they learn they need
// credentials). HEADs are not counted.
func (r *Registry) Requests(dgst digest.Digest) int {
	r.faults.mu.Lock()
	defer r.faults.mu.Unlock()
	return r.faults.requests[dgst]
}

// ServeManifest makes GET and HEAD of /v2/<repo>/manifests/<ref> answer
// body with the given Content-Type, as a registry that accepted a manifest
// of a type (or a form) a client cannot handle would. The registry's own
// validation never sees it. ClearFaults does not undo it.
func (r *Registry) ServeManifest(repo, ref, mediaType string, body []byte) {
	r.faults.mu.Lock()
	defer r.faults.mu.Unlock()
	r.faults.manifests["/v2/"+repo+"/manifests/"+ref] = servedManifest{mediaType, body}
}

type servedManifest struct {
	mediaType string
	body      []byte
}

type truncation struct {
	n    int
	left int // responses still to cut; < 0 means unlimited
}

type faults struct {
	mu          sync.Mutex
	corrupt     map[digest.Digest]bool
	truncate    map[digest.Digest]*truncation
	requests    map[digest.Digest]int
	manifests   map[string]servedManifest
	bytesPerSec int
}

func (f *faults) init() {
	f.corrupt = map[digest.Digest]bool{}
	f.truncate = map[digest.Digest]*truncation{}
	f.requests = map[digest.Digest]int{}
	f.manifests = map[string]servedManifest{}
}

// plan is what one response gets.
type plan struct {
	corrupt bool
	limit   int // body bytes before the cut; < 0 means no cut
	rate    int // bytes per second; 0 means full speed
}

// begin counts a GET of d answered with code and returns its faults.
func (f *faults) begin(d digest.Digest, code int) plan {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := plan{limit: -1}
	if code == http.StatusUnauthorized {
		return p
	}
	f.requests[d]++
	if code/100 != 2 {
		return p // leave error bodies alone
	}
	p.corrupt = f.corrupt[d]
	p.rate = f.bytesPerSec
	if t := f.truncate[d]; t != nil && t.left != 0 {
		p.limit = t.n
		if t.left > 0 {
			t.left--
		}
	}
	return p
}

type faultHandler struct {
	next http.Handler
	f    *faults

	// Stop waits for handlers still running on connections it closed, so
	// none touches storage after it is removed.
	running sync.RWMutex
	stopped bool
}

// stop waits for running handlers and refuses later ones.
func (h *faultHandler) stop() {
	h.running.Lock()
	h.stopped = true
	h.running.Unlock()
}

func (h *faultHandler) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	h.running.RLock()
	defer h.running.RUnlock()
	if h.stopped {
		http.Error(w, "registry stopped", http.StatusServiceUnavailable)
		return
	}
	h.f.mu.Lock()
	m, override := h.f.manifests[req.URL.Path]
	h.f.mu.Unlock()
	if override && (req.Method == http.MethodGet || req.Method == http.MethodHead) {
		w.Header().Set("Content-Type", m.mediaType)
		w.Header().Set("Content-Length", strconv.Itoa(len(m.body)))
		w.Header().Set("Docker-Content-Digest", digest.FromBytes(m.body).String())
		if req.Method == http.MethodGet {
			w.Write(m.body)
		}
		return
	}
	if req.Method != http.MethodGet {
		h.next.ServeHTTP(w, req)
		return
	}
	kind, ref := splitPath(req.URL.Path)
	if kind == "" {
		h.next.ServeHTTP(w, req)
		return
	}
	fw := &faultWriter{ResponseWriter: w, f: h.f}
	if d, err := digest.Parse(ref); err == nil {
		fw.dgst = d
	} else if kind == "blobs" {
		h.next.ServeHTTP(w, req) // not a blob fetch (uploads)
		return
	}
	h.next.ServeHTTP(fw, req)
}

// splitPath recognises /v2/<name>/blobs/<digest> and
// /v2/<name>/manifests/<reference>.
func splitPath(p string) (kind, ref string) {
	if !strings.HasPrefix(p, "/v2/") {
		return "", ""
	}
	i := strings.LastIndexByte(p, '/')
	j := strings.LastIndexByte(p[:i], '/')
	if j < len("/v2") {
		return "", ""
	}
	switch kind := p[j+1 : i]; kind {
	case "blobs", "manifests":
		return kind, p[i+1:]
	}
	return "", ""
}

var errCut = errors.New("testregistry: connection cut by TruncateAfter")

// faultWriter applies one response's plan to the body the registry writes.
type faultWriter struct {
	http.ResponseWriter
	f           *faults
	dgst        digest.Digest // from the path; empty for a manifest by tag
	wroteHeader bool
	plan        plan
	written     int
	cut         bool
}

func (w *faultWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.wroteHeader = true
		d := w.dgst
		if d == "" {
			d = digest.Digest(w.Header().Get("Docker-Content-Digest"))
		}
		w.plan = plan{limit: -1}
		if d != "" {
			w.plan = w.f.begin(d, code)
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *faultWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.cut {
		return 0, errCut
	}
	cutNow := false
	if w.plan.limit >= 0 && w.written+len(p) >= w.plan.limit {
		p = p[:w.plan.limit-w.written]
		cutNow = true
	}
	if w.plan.corrupt {
		q := make([]byte, len(p))
		for i, b := range p {
			q[i] = ^b
		}
		p = q
	}
	n, err := w.paced(p)
	w.written += n
	if err != nil {
		return n, err
	}
	if cutNow {
		w.abort()
		return n, errCut
	}
	return n, nil
}

// paced writes p at the planned rate, in slices of about 20 ms so a slow
// blob trickles rather than arriving in bursts.
func (w *faultWriter) paced(p []byte) (int, error) {
	if w.plan.rate <= 0 {
		return w.ResponseWriter.Write(p)
	}
	step := max(1, w.plan.rate/50)
	total := 0
	for len(p) > 0 {
		c := p[:min(step, len(p))]
		n, err := w.ResponseWriter.Write(c)
		total += n
		if err != nil {
			return total, err
		}
		w.Flush()
		time.Sleep(time.Duration(n) * time.Second / time.Duration(w.plan.rate))
		p = p[n:]
	}
	return total, nil
}

// abort sends what was written so far and closes the connection without
// finishing the response, so the client sees the body end early.
func (w *faultWriter) abort() {
	w.cut = true
	w.Flush()
	if hj, ok := w.ResponseWriter.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			conn.Close()
			return
		}
	}
	// net/http closes the connection without ending the body on this panic.
	panic(http.ErrAbortHandler)
}

func (w *faultWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (w *faultWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
