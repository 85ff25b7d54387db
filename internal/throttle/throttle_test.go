package throttle_test

import (
	"testing"
	"time"

	"loopmx/internal/throttle"
)

// TestThrottle: one line per interval gets through, and the next one says
// how many were held back in between.
func TestThrottle(t *testing.T) {
	th := throttle.Throttle{Every: time.Minute}
	t0 := time.Unix(1000, 0)
	if ok, held := th.Allow(t0); !ok || held != 0 {
		t.Fatalf("first line: %v %d, want through with none held", ok, held)
	}
	for i := 1; i <= 3; i++ {
		if ok, _ := th.Allow(t0.Add(time.Duration(i) * time.Second)); ok {
			t.Fatalf("line %d within the minute got through", i)
		}
	}
	if ok, held := th.Allow(t0.Add(time.Minute)); !ok || held != 3 {
		t.Fatalf("line after a minute: %v %d, want through with 3 held", ok, held)
	}
}
