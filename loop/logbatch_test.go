package loop

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
)

// The lines of an iteration reach a pipe whole, in order, in writes of at
// most PIPE_BUF bytes, so a reader sharing the pipe with other writers
// never sees a line cut.
func TestLogBatchPipeWritesWholeLines(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b := newLogBatch(w)
	var want []string
	for i := range 100 {
		line := fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i, strings.Repeat("x", i*7))
		want = append(want, line)
		b.Write([]byte(line + "\n"))
	}
	long := `{"long":"` + strings.Repeat("y", 3*logChunk) + `"}`
	want = append(want, long)
	b.Write([]byte(long + "\n"))
	flushed := make(chan struct{})
	go func() { b.flush(); w.Close(); close(flushed) }()

	var got []string
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		got = append(got, sc.Text())
	}
	<-flushed
	if len(got) != len(want) {
		t.Fatalf("got %d lines, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("line %d: got %.60q, want %.60q", i, got[i], want[i])
		}
	}
	if len(b.buf) != 0 {
		t.Errorf("after flush the batch still holds %d bytes", len(b.buf))
	}
}

// recordWriter records each Write it is given.
type recordWriter struct{ writes [][]byte }

func (r *recordWriter) Write(p []byte) (int, error) {
	r.writes = append(r.writes, bytes.Clone(p))
	return len(p), nil
}

// A writer that is not a file (the console format's) gets one line per
// Write, as zerolog would have given it.
func TestLogBatchOneLinePerWriteToOtherWriters(t *testing.T) {
	rw := &recordWriter{}
	b := newLogBatch(rw)
	b.Write([]byte("{\"a\":1}\n"))
	b.Write([]byte("{\"b\":2}\n"))
	b.flush()
	if len(rw.writes) != 2 || string(rw.writes[0]) != "{\"a\":1}\n" || string(rw.writes[1]) != "{\"b\":2}\n" {
		t.Fatalf("writes: %q", rw.writes)
	}
}

// A file gets whole chunks: many lines in one write.
func TestLogBatchChunksToFile(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := newLogBatch(f)
	for i := range 50 {
		fmt.Fprintf(b, "{\"n\":%d}\n", i)
	}
	b.flush()
	data, _ := os.ReadFile(f.Name())
	if n := bytes.Count(data, []byte("\n")); n != 50 {
		t.Fatalf("the file has %d lines, want 50", n)
	}
}
