package metrics

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// The channel between a supervisor and one worker is a Unix stream
// socket pair made at fork. The supervisor writes one byte to ask; the
// worker answers with a frame: a 4-byte big-endian length, then its
// metric families in Prometheus' length-delimited protobuf format. A
// worker that drains sends one last frame on its own before it exits, so
// its final counts are not lost.

// maxFrame bounds a frame the supervisor accepts from a worker.
const maxFrame = 64 << 20

// frameFormat is the encoding of a frame's body.
var frameFormat = expfmt.NewFormat(expfmt.TypeProtoDelim)

// WorkerChannel is a worker's end of the channel.
type WorkerChannel struct {
	conn *net.UnixConn
	g    prometheus.Gatherer
	mu   sync.Mutex // one frame at a time
}

// ServeWorker answers the supervisor's requests on f (the descriptor
// named by the worker's environment) with what g gathers, on a goroutine
// of its own, until the supervisor closes its end.
func ServeWorker(f *os.File, g prometheus.Gatherer) (*WorkerChannel, error) {
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("metrics: worker channel: %w", err)
	}
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		nc.Close()
		return nil, errors.New("metrics: worker channel: not a Unix socket")
	}
	w := &WorkerChannel{conn: uc, g: g}
	go w.serve()
	return w, nil
}

func (w *WorkerChannel) serve() {
	req := make([]byte, 1)
	for {
		if _, err := w.conn.Read(req); err != nil {
			return
		}
		if err := w.send(); err != nil {
			return
		}
	}
}

// Final sends the last frame, when the worker is about to exit.
func (w *WorkerChannel) Final() {
	w.send()
	w.conn.Close()
}

// send writes one frame of what the gatherer has now.
func (w *WorkerChannel) send() error {
	mfs, _ := w.g.Gather() // what could be gathered, even after an error
	body, err := encodeFrame(mfs)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err = w.conn.Write(body)
	return err
}

// encodeFrame returns the frame holding mfs.
func encodeFrame(mfs []*dto.MetricFamily) ([]byte, error) {
	buf := &frameBuf{b: make([]byte, 4, 64<<10)}
	enc := expfmt.NewEncoder(buf, frameFormat)
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return nil, err
		}
	}
	binary.BigEndian.PutUint32(buf.b, uint32(len(buf.b)-4))
	return buf.b, nil
}

type frameBuf struct{ b []byte }

func (f *frameBuf) Write(p []byte) (int, error) { f.b = append(f.b, p...); return len(p), nil }

// readFrame reads one frame and decodes its families.
func readFrame(r *bufio.Reader) ([]*dto.MetricFamily, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxFrame {
		return nil, fmt.Errorf("metrics: a frame of %d bytes", n)
	}
	dec := expfmt.NewDecoder(io.LimitReader(r, int64(n)), frameFormat)
	var mfs []*dto.MetricFamily
	for {
		mf := &dto.MetricFamily{}
		err := dec.Decode(mf)
		if errors.Is(err, io.EOF) {
			return mfs, nil
		}
		if err != nil {
			return nil, err
		}
		mfs = append(mfs, mf)
	}
}
