package redisx

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestDownLoggerOncePerInterval(t *testing.T) {
	var buf bytes.Buffer
	log := zerolog.New(&buf)
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	d := NewDownLogger("limit")
	d.now = func() time.Time { return now }
	lines := func() []string { return strings.Split(strings.TrimSpace(buf.String()), "\n") }
	refused := errors.New("dial tcp 127.0.0.1:6379: connect: connection refused")

	d.Up(&log)
	if buf.Len() != 0 {
		t.Fatalf("Up without an outage logged %q", buf.String())
	}
	for range 500 {
		d.Down(&log, refused)
		now = now.Add(100 * time.Millisecond) // 50 s in all
	}
	if l := lines(); len(l) != 1 || !strings.Contains(l[0], `"message":"redis unavailable"`) ||
		!strings.Contains(l[0], `"plugin":"limit"`) || !strings.Contains(l[0], "connection refused") {
		t.Fatalf("500 failures within 50 s logged %q, want one redis unavailable line", l)
	}
	if !d.IsDown() {
		t.Error("IsDown = false during an outage")
	}
	now = now.Add(15 * time.Second)
	d.Down(&log, refused)
	if l := lines(); len(l) != 2 || !strings.Contains(l[1], `"failures":500`) {
		t.Fatalf("a failure a minute later logged %q, want a second line counting 500 failures", l)
	}

	d.Up(&log)
	d.Up(&log)
	if l := lines(); len(l) != 3 || !strings.Contains(l[2], `"message":"redis available again"`) || !strings.Contains(l[2], `"failures":501`) {
		t.Fatalf("recovery logged %q, want one line", l)
	}
	if d.IsDown() {
		t.Error("IsDown = true after recovery")
	}

	// A new outage is reported at once, however soon it follows.
	now = now.Add(time.Second)
	d.Down(&log, refused)
	if l := lines(); len(l) != 4 || !strings.Contains(l[3], `"failures":1`) {
		t.Fatalf("a new outage logged %q", l)
	}
	d.Down(nil, refused) // a nil logger is allowed
}
