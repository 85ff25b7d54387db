package redisx

import (
	"errors"
	"testing"
	"time"

	"loopmx/plugins"
)

func TestFallback(t *testing.T) {
	for _, closed := range []bool{false, true} {
		f := Fallback{Plugin: "test/fallback", Closed: closed, Down: NewDownLogger("test/fallback")}
		c := &plugins.Conn{ID: "t.1"}
		c.BeginTx("s@example.net", time.Now())
		if f.Deferred(c) != nil {
			t.Fatal("Deferred without Defer")
		}
		f.Defer(c, ErrDown)
		if err := f.Deferred(c); err != ErrDown {
			t.Fatalf("Deferred = %v, want ErrDown", err)
		}
		if f.Deferred(c) != nil {
			t.Fatal("Defer's verdict outlived the call it was for")
		}
		want := plugins.NoOpinion()
		if closed {
			want = plugins.InternalError()
		}
		for _, err := range []error{ErrDown, ErrSlow, errors.New("connection refused")} {
			if got := f.Answer(c, "bob@example.com", err); got.Action != want.Action || got.Reply != want.Reply {
				t.Errorf("closed %v, %v: %+v, want %+v", closed, err, got, want)
			}
		}
		got, _ := c.Tx.Findings()
		msgs := []string{"bob@example.com: redis unavailable", "bob@example.com: redis busy", "bob@example.com: redis unavailable"}
		for i, m := range msgs {
			if i >= len(got) || got[i].Message != m || got[i].Outcome != plugins.Err || got[i].Plugin != "test/fallback" {
				t.Errorf("finding %d: %+v, want err %q", i, got, m)
			}
		}
		if !f.Down.down.Load() {
			t.Error("a failed call did not reach the DownLogger")
		}
	}
}
