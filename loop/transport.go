package loop

import (
	"time"

	"github.com/rs/zerolog"

	"loopmx/loop/workpool"
	"loopmx/plugins"
)

// transport moves a connection's bytes. There are two: the epoll
// transport of an event loop (epoll_linux.go), which every plain
// connection on Linux uses, and the stream transport (stream.go), a
// goroutine over a net.Conn, which a connection moves to when TLS starts
// and which serves every connection where epoll does not exist. The
// session logic and the hook driver (conn.go, hooks.go) reach the client
// only through this interface.
type transport interface {
	// write queues reply bytes; flush sends what is queued and, on the
	// epoll transport, picks up parsing again when the client caught up.
	write(b []byte)
	flush()
	// retain makes the unprocessed input (conn.in) the connection's own
	// before the transport reuses its read buffer.
	retain()
	// now is the transport's clock.
	now() time.Time
	// draining reports whether the server has stopped taking sessions.
	draining() bool
	// logger is where the connection's lines go: its event loop's batch,
	// or the server's log.
	logger() *zerolog.Logger
	// lines writes the connection and transaction lines without zerolog
	// (logline.go); nil where they go through logger.
	lines() *lineOut
	// await runs job, a blocking hook or a spool write, on pool, and
	// tells w on the connection's transport how it ended: returned with
	// its result, or expired once timeout passed first. false means the
	// pool refused the job.
	await(pool *workpool.Pool, job func() plugins.Result, w awaiter, gen uint32, timeout time.Duration) bool
	// pause parks the connection for d (a hook's Delay) and then calls
	// conn.pauseOver; input that arrives meanwhile is early talk.
	pause(d time.Duration)
	// startTLS starts the TLS handshake once the replies queued so far
	// are on the wire.
	startTLS()
	// closeWhenFlushed closes once the queued replies are written;
	// closeNow closes at once. Both end in conn.ended.
	closeWhenFlushed()
	closeNow()
	// retire hears that the connection has finished and that nothing
	// but the transport holds it or sp: the epoll transport keeps their
	// memory for a next connection.
	retire(sp spare)
}

// awaiter is what waits for a job handed to transport.await: returned
// runs with the job's result, expired once its timeout passed first (the
// late result is then dropped by generation). Both run on the
// connection's transport.
type awaiter interface {
	returned(res plugins.Result)
	expired()
}

// hookWait is the connection waiting for a blocking hook, spillWait the
// connection waiting for a spool write (spool.go). Each is the *conn
// itself, so handing one to await allocates nothing.
type (
	hookWait  conn
	spillWait conn
)

func (w *hookWait) returned(res plugins.Result) { (*conn)(w).hookReturned(res) }
func (w *hookWait) expired()                    { (*conn)(w).hookExpired() }
