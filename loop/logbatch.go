package loop

import (
	"bytes"
	"io"
	"os"
)

// logBatch collects the log lines an event loop writes during one
// iteration and hands them to the real output when the iteration ends,
// before the loop waits again. Under load an iteration serves many
// connections, and their connection and transaction lines leave in one
// write(2) instead of one each: at the default level that write was the
// largest cost of a plain session above the floor (docs/benchmarks.md).
// Each line keeps the time it was made; nothing waits longer than the
// iteration that made it.
type logBatch struct {
	out   io.Writer
	whole bool // out takes several lines per Write (an *os.File)
	buf   []byte
}

// logChunk bounds one write of a batch. A write of at most PIPE_BUF
// bytes to a pipe is never interleaved with another process's, so lines
// of the loops, the workpool and other workers stay whole in a shared
// pipe or journal stream.
const logChunk = 4096

func newLogBatch(out io.Writer) *logBatch {
	_, whole := out.(*os.File)
	return &logBatch{out: out, whole: whole}
}

// Write keeps one line (zerolog writes each event in one call).
func (b *logBatch) Write(p []byte) (int, error) {
	if len(b.buf)+len(p) > 4*logChunk {
		b.flush()
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

// keep takes buf, the batch with one more line appended in place (by
// lineOut).
func (b *logBatch) keep(buf []byte) {
	b.buf = buf
	if len(b.buf) > 4*logChunk {
		b.flush()
	}
}

// flush writes what the batch holds: in writes of whole lines up to
// logChunk bytes to a file or pipe, or line by line to any other writer
// (the console format reads one event per Write).
func (b *logBatch) flush() {
	rest := b.buf
	for len(rest) > 0 {
		n := len(rest)
		if !b.whole {
			n = bytes.IndexByte(rest, '\n') + 1
		} else if n > logChunk {
			// The last line end within the chunk; a longer line goes alone.
			if i := bytes.LastIndexByte(rest[:logChunk], '\n'); i >= 0 {
				n = i + 1
			} else if i := bytes.IndexByte(rest, '\n'); i >= 0 {
				n = i + 1
			}
		}
		if n <= 0 {
			n = len(rest)
		}
		b.out.Write(rest[:n])
		rest = rest[n:]
	}
	if cap(b.buf) > 4*logChunk {
		b.buf = nil // a burst of long lines does not stay in memory
	} else {
		b.buf = b.buf[:0]
	}
}
