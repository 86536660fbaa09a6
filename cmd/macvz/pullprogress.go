package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// pullView is a pull's progress as the CLI gets it from the daemon.
type pullView struct {
	Ref     string
	Elapsed time.Duration
	Blobs   []blobView
}

// blobView is one blob of a pull.
type blobView struct {
	Digest, MediaType string
	Size, Done        int64
	Fetched           int64
	Complete          bool
}

func (v pullView) totals() (size, done, fetched int64, complete int) {
	for _, b := range v.Blobs {
		size += b.Size
		done += b.Done
		fetched += b.Fetched
		if b.Complete {
			complete++
		}
	}
	return size, done, fetched, complete
}

// progressPrinter shows a pull's progress: on a terminal a block of
// lines redrawn in place (the total, then the blobs downloading now, at
// most maxActive of them), elsewhere one plain line every plainEvery.
// Rates come from the bytes downloaded between two updates, smoothed.
type progressPrinter struct {
	verb       progressVerb
	w          io.Writer
	tty        bool
	plainEvery time.Duration

	drawn     int // lines of the last terminal block
	printed   bool
	lastPlain time.Duration
	prev      map[string]int64 // per blob: fetched at the last update
	prevAt    time.Duration
	prevTotal int64
	rate      float64            // bytes/s, whole pull
	rates     map[string]float64 // bytes/s, per blob
}

const maxActive = 6

// progressVerb words what is shown: a pull, an import or a push.
type progressVerb struct {
	noun, past, moved, active string
}

var (
	verbPull   = progressVerb{noun: "pull", past: "pulled", moved: "downloaded", active: "downloading"}
	verbImport = progressVerb{noun: "import", past: "imported", moved: "read", active: "reading"}
	verbPush   = progressVerb{noun: "push", past: "pushed", moved: "uploaded", active: "uploading"}
)

func newProgressPrinter(w io.Writer, tty bool) *progressPrinter {
	return &progressPrinter{verb: verbPull, w: w, tty: tty, plainEvery: 5 * time.Second, prev: map[string]int64{}, rates: map[string]float64{}}
}

// update takes a new view of the pull.
func (p *progressPrinter) update(v pullView) {
	p.measure(v)
	if p.tty {
		p.draw(v)
		return
	}
	if !p.printed || v.Elapsed-p.lastPlain >= p.plainEvery {
		p.printed, p.lastPlain = true, v.Elapsed
		fmt.Fprintln(p.w, p.summary(v))
	}
}

// measure updates the rates from the bytes fetched since the last view.
func (p *progressPrinter) measure(v pullView) {
	dt := (v.Elapsed - p.prevAt).Seconds()
	_, _, fetched, _ := v.totals()
	if dt > 0 {
		p.rate = smooth(p.rate, float64(fetched-p.prevTotal)/dt)
		for _, b := range v.Blobs {
			p.rates[b.Digest] = smooth(p.rates[b.Digest], float64(b.Fetched-p.prev[b.Digest])/dt)
		}
	}
	p.prevAt, p.prevTotal = v.Elapsed, fetched
	for _, b := range v.Blobs {
		p.prev[b.Digest] = b.Fetched
	}
}

// smooth is an exponential moving average: steady on a bursty link, yet
// a stall shows within seconds.
func smooth(old, now float64) float64 {
	if old == 0 {
		return max(now, 0)
	}
	return max(0.7*old+0.3*now, 0)
}

// summary is the one-line state of the pull: bytes, share, rate, ETA.
func (p *progressPrinter) summary(v pullView) string {
	size, done, _, complete := v.totals()
	if len(v.Blobs) == 0 {
		return fmt.Sprintf("%s: resolving (%s)", v.Ref, v.Elapsed.Round(time.Second))
	}
	pct := 100.0
	if size > 0 {
		pct = 100 * float64(done) / float64(size)
	}
	line := fmt.Sprintf("%s: %s of %s (%.0f%%), %d of %d blobs, %s/s", v.Ref, humanSize(done), humanSize(size), pct, complete, len(v.Blobs), humanSize(int64(p.rate)))
	if eta, ok := etaOf(size-done, p.rate); ok {
		line += ", ETA " + eta
	}
	return line
}

// etaOf is the time left at rate, when the rate says anything.
func etaOf(left int64, rate float64) (string, bool) {
	if left <= 0 || rate < 1 {
		return "", false
	}
	return time.Duration(float64(left) / rate * float64(time.Second)).Round(time.Second).String(), true
}

// draw redraws the terminal block: the summary, then each blob that is
// downloading (up to maxActive; "+N more" past that).
func (p *progressPrinter) draw(v pullView) {
	lines := []string{p.summary(v)}
	var active []blobView
	for _, b := range v.Blobs {
		if !b.Complete && b.Done > 0 {
			active = append(active, b)
		}
	}
	for i, b := range active {
		if i == maxActive {
			lines = append(lines, fmt.Sprintf("  … and %d more %s", len(active)-maxActive, p.verb.active))
			break
		}
		lines = append(lines, fmt.Sprintf("  %s %-6s %s %9s / %-9s %s/s", shortDigest(b.Digest), blobKind(b.MediaType), bar(b.Done, b.Size, 20), humanSize(b.Done), humanSize(b.Size), humanSize(int64(p.rates[b.Digest]))))
	}
	var sb strings.Builder
	if p.drawn > 0 {
		fmt.Fprintf(&sb, "\x1b[%dA", p.drawn) // back to the block's first line
	}
	for _, l := range lines {
		sb.WriteString("\x1b[2K" + l + "\n")
	}
	// Lines left from a longer block before are cleared.
	for i := len(lines); i < p.drawn; i++ {
		sb.WriteString("\x1b[2K\n")
	}
	if extra := p.drawn - len(lines); extra > 0 {
		fmt.Fprintf(&sb, "\x1b[%dA", extra)
	}
	p.drawn = len(lines)
	io.WriteString(p.w, sb.String())
}

// done prints how the pull ended.
func (p *progressPrinter) done(v pullView, id string, err error) {
	if p.tty && p.drawn > 0 {
		p.draw(v)
	}
	if err != nil {
		fmt.Fprintf(p.w, "%s %s failed after %s: %v\n", p.verb.noun, v.Ref, v.Elapsed.Round(time.Second), err)
		return
	}
	size, _, fetched, _ := v.totals()
	fmt.Fprintf(p.w, "%s %s (%s) in %s: %s, %s %s\n", p.verb.past, v.Ref, shortID(id), v.Elapsed.Round(100*time.Millisecond), humanSize(size), humanSize(fetched), p.verb.moved)
}

func shortDigest(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	return d[:min(12, len(d))]
}

// blobKind names a blob by its media type, as a user knows them.
func blobKind(mt string) string {
	switch {
	case strings.Contains(mt, "disk"):
		return "disk"
	case strings.Contains(mt, "nvram"):
		return "nvram"
	case strings.Contains(mt, "kernel"):
		return "kernel"
	case strings.Contains(mt, "initrd"):
		return "initrd"
	case strings.Contains(mt, "config"):
		return "config"
	}
	return "layer"
}

// bar is a text progress bar of width cells.
func bar(done, size int64, width int) string {
	n := width
	if size > 0 {
		n = int(int64(width) * min(done, size) / size)
	}
	return "[" + strings.Repeat("=", n) + strings.Repeat(" ", width-n) + "]"
}
