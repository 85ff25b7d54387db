// Package testlog holds the log sink tests share: a buffer the servers
// under test (event loops, workpool goroutines, child processes' output
// copiers) write to while the test reads it. Only _test.go files and
// internal/servertest import it; it imports nothing of loopmx, so the
// loop package's own tests can use it too.
package testlog

import (
	"bytes"
	"strings"
	"sync"
)

// Buffer is a goroutine-safe log sink.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p to the buffer.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Count returns the number of lines that hold every one of subs.
func (b *Buffer) Count(subs ...string) int {
	n := 0
	for line := range strings.SplitSeq(b.String(), "\n") {
		all := line != ""
		for _, sub := range subs {
			all = all && strings.Contains(line, sub)
		}
		if all {
			n++
		}
	}
	return n
}
