package cri

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestTracesURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:4318":              "http://127.0.0.1:4318/v1/traces",
		"http://127.0.0.1:4318/":             "http://127.0.0.1:4318/v1/traces",
		"https://otel.example/v1/traces":     "https://otel.example/v1/traces",
		"https://otel.example/tenant/a/otlp": "https://otel.example/tenant/a/otlp",
	} {
		if got := tracesURL(in); got != want {
			t.Errorf("tracesURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestExportErrorsRateLimited(t *testing.T) {
	var buf bytes.Buffer
	e := &exportErrors{log: slog.New(slog.NewTextHandler(&buf, nil)), every: time.Hour}
	for range 5 {
		e.Handle(errors.New("connection refused"))
	}
	if n := strings.Count(buf.String(), "spans not delivered"); n != 1 || !strings.Contains(buf.String(), "connection refused") {
		t.Fatalf("%d warnings for 5 failures within the interval, want 1:\n%s", n, buf.String())
	}
	e.last = time.Now().Add(-2 * time.Hour)
	e.Handle(errors.New("timeout"))
	if !strings.Contains(buf.String(), "failures_not_shown=4") {
		t.Errorf("the next warning does not count the 4 unseen failures:\n%s", buf.String())
	}
}
