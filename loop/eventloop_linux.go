package loop

import (
	"net/netip"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"loopmx/plugins"
)

const (
	readBufSize = 64 << 10
	tickEvery   = 500 * time.Millisecond
	acceptBatch = 64
	// aloneAcceptFor bounds the accepting of a loop alone on its
	// listeners within one iteration (see accept).
	aloneAcceptFor = time.Millisecond
)

type ctl uint8

const (
	ctlDrain   ctl = iota + 1 // stop accepting, close sessions outside a transaction
	ctlForce                  // the graceful time is over: close everything
	ctlMetrics                // copy the counts out for a scrape (metrics.go)
)

// eventLoop is one reactor: an epoll instance, an eventfd to be woken by
// the workpool, and the connections it accepted.
type eventLoop struct {
	srv    *Server
	idx    int
	epfd   int
	efd    int
	events []unix.EpollEvent
	rbuf   []byte
	wbuf   []byte // replies of the connection being handled; empty between handlers
	conns  []*epollConn
	nconns int
	served uint64 // connections accepted by this loop
	met    *meter // this loop's counts; nil with metrics off (metrics.go)
	log    zerolog.Logger
	logb   *logBatch // the lines of this iteration; nil without Options.LogOut
	lines  *lineOut  // the connection and transaction lines into logb; nil without it
	iter   uint64    // iterations of run, for the metrics' accept queue check
	now    time.Time

	// one list per phase (guard.go) of the open connections that wait for
	// their client, in the order their phase started; a list's deadlines
	// come in that order, so the tick stops at the first young one
	lists [phaseClosing + 1]connList

	acceptOff    bool
	acceptResume time.Time
	acceptDelay  time.Duration
	draining     bool
	nextTick     time.Time

	timers timerHeap
	// connections handed to TLS during this iteration; their goroutines
	// start when the loop is done with them
	handoffs []*stream
	retired  []freeConn    // connections finished in this iteration (epoll_linux.go)
	free     []freeConn    // their memory, zeroed, for the next ones
	reused   atomic.Uint64 // connections that took their memory from free

	// load: the longest batch of work per window, for toobusy
	batchMax time.Duration
	lagPrev  atomic.Int64
	lagCur   atomic.Int64

	// done hooks and control messages, posted from other goroutines
	mu      sync.Mutex
	done    []hookResult
	ctls    []ctl
	woken   atomic.Bool
	exited  bool // guarded by mu; set before efd is closed
	wakeBuf [8]byte
}

func newEventLoop(s *Server, idx int) (*eventLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	el := &eventLoop{
		srv:    s,
		idx:    idx,
		epfd:   epfd,
		efd:    efd,
		events: make([]unix.EpollEvent, 256),
		rbuf:   make([]byte, readBufSize),
		wbuf:   make([]byte, 0, 4096),
		now:    time.Now(),
		met:    s.loopMeter(),
		log:    s.log,
	}
	if s.opts.LogOut != nil {
		el.logb = newLogBatch(s.opts.LogOut)
		el.log = s.log.Output(el.logb)
		el.lines = newLineOut(el.log, el.logb)
	}
	if e := rawEpollCtl(epfd, unix.EPOLL_CTL_ADD, efd, unix.EPOLLIN); e != 0 {
		return nil, e
	}
	if err := el.armListeners(); err != nil {
		return nil, err
	}
	return el, nil
}

// armListeners waits on every listener; EPOLLEXCLUSIVE wakes only one of
// the loops (and processes) waiting on a shared socket.
func (el *eventLoop) armListeners() error {
	for i := range el.srv.listeners {
		if e := el.armListener(i); e != 0 && e != unix.EEXIST {
			return e
		}
	}
	el.acceptOff = false
	return nil
}

// armListener registers listener i, tagged with 1+i.
func (el *eventLoop) armListener(i int) syscall.Errno {
	return rawEpollCtlTag(el.epfd, unix.EPOLL_CTL_ADD, el.srv.listeners[i].fd, unix.EPOLLIN|unix.EPOLLEXCLUSIVE, int32(i+1))
}

func (el *eventLoop) disarmListeners() {
	for _, l := range el.srv.listeners {
		rawEpollCtl(el.epfd, unix.EPOLL_CTL_DEL, l.fd, 0)
	}
	el.acceptOff = true
}

// post hands a finished hook or a control message to the loop and wakes
// it. It is the only entry point from other goroutines.
func (el *eventLoop) post(v any) {
	el.mu.Lock()
	defer el.mu.Unlock()
	if el.exited {
		return // a late hook result after the loop stopped: nobody to tell
	}
	switch x := v.(type) {
	case hookResult:
		el.done = append(el.done, x)
	case ctl:
		el.ctls = append(el.ctls, x)
	}
	if !el.woken.Swap(true) {
		one := [8]byte{1}
		rawWrite(el.efd, one[:])
	}
}

func (el *eventLoop) run() {
	// The loop keeps one OS thread: it never moves between the runtime's
	// threads (each move woke another thread), and the thread carries the
	// loop's name for top -H, ps -L and per-thread CPU accounting.
	runtime.LockOSThread()
	unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&el.threadName()[0])), 0, 0, 0)
	defer el.srv.stopped.Done()
	defer unix.Close(el.epfd)
	defer func() {
		el.mu.Lock()
		el.exited = true
		unix.Close(el.efd)
		el.mu.Unlock()
	}()
	defer func() {
		if el.logb != nil {
			el.logb.flush()
		}
		el.srv.log.Info().Int("loop", el.idx).Uint64("connections_accepted", el.served).Msg("event loop stopped")
		if el.met != nil {
			el.met.publish(true)
		}
	}()
	el.nextTick = el.now.Add(tickEvery)
	for {
		next := el.nextTick
		if len(el.timers) > 0 && el.timers[0].deadline.Before(next) {
			next = el.timers[0].deadline
		}
		wait := int(next.Sub(el.now)/time.Millisecond) + 1
		if wait < 1 {
			wait = 1
		}
		n, e := rawEpollWait(el.epfd, el.events, wait)
		if e != 0 {
			n = 0 // EINTR: the runtime's preemption signal
		}
		el.now = time.Now()
		el.iter++
		for i := 0; i < n; i++ {
			ev := &el.events[i]
			fd := int(ev.Fd)
			switch {
			case ev.Pad > 0:
				el.accept(int(ev.Pad) - 1)
			case fd == el.efd:
				el.wake()
			default:
				if fd < len(el.conns) {
					if c := el.conns[fd]; c != nil {
						c.onEvent(ev.Events)
					}
				}
			}
		}
		if len(el.timers) > 0 {
			el.runTimers()
		}
		for i, s := range el.handoffs {
			go s.run(false)
			el.handoffs[i] = nil
		}
		el.handoffs = el.handoffs[:0]
		if len(el.retired) > 0 {
			el.recycle()
		}
		if el.logb != nil && len(el.logb.buf) > 0 {
			el.logb.flush()
		}
		if n > 0 {
			// How long this batch kept every other event waiting.
			if busy := time.Since(el.now); busy > el.batchMax {
				el.batchMax = busy
				el.lagCur.Store(int64(busy))
			}
		}
		if !el.now.Before(el.nextTick) {
			el.tick()
			el.nextTick = el.now.Add(tickEvery)
		}
		if el.draining && el.nconns == 0 {
			return
		}
	}
}

// wake runs the hooks that came back from the workpool and control
// messages.
func (el *eventLoop) wake() {
	rawRead(el.efd, el.wakeBuf[:])
	el.woken.Store(false)
	el.mu.Lock()
	done, ctls := el.done, el.ctls
	el.done, el.ctls = nil, nil
	el.mu.Unlock()
	for _, r := range done {
		r.c.hookDone(r)
	}
	for _, m := range ctls {
		switch m {
		case ctlDrain:
			el.drain()
		case ctlForce:
			el.forceClose()
		case ctlMetrics:
			el.met.publish(false)
		}
	}
}

func (el *eventLoop) accept(li int) {
	if el.draining || el.acceptOff {
		return // an event from before the listeners were taken out
	}
	l := &el.srv.listeners[li]
	lfd := l.fd
	for i := 0; i < acceptBatch; i++ {
		fd, peer, e := rawAccept(lfd)
		switch e {
		case 0:
		case unix.EAGAIN:
			return
		case unix.EINTR, unix.ECONNABORTED, unix.EPROTO:
			continue
		case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
			// Out of descriptors or memory: stop waiting on the listeners
			// for a while instead of spinning; connections wait in the
			// backlog. The delay doubles up to a second.
			el.met.acceptFailed(li, acceptError(e))
			el.srv.logAcceptError(e)
			if el.acceptDelay == 0 {
				el.acceptDelay = 10 * time.Millisecond
			} else if el.acceptDelay < time.Second {
				el.acceptDelay *= 2
			}
			el.disarmListeners()
			el.acceptResume = el.now.Add(el.acceptDelay)
			if el.acceptResume.Before(el.nextTick) {
				el.nextTick = el.acceptResume
			}
			return
		default:
			el.met.acceptFailed(li, acceptError(e))
			el.srv.logAcceptError(e)
			return
		}
		el.acceptDelay = 0
		el.served++
		el.open(fd, peer, l, li)
		if !el.srv.opts.SingleAccept {
			continue
		}
		if el.srv.rearm {
			// EPOLLEXCLUSIVE wakes the first waiter on the socket, and a
			// loop that re-arms stays first: it would take the whole
			// burst. Registering again puts this loop at the back of the
			// queue, so the next connection wakes another loop or worker
			// process (the point of UV_TCP_SINGLE_ACCEPT).
			if !el.draining && !el.acceptOff {
				rawEpollCtl(el.epfd, unix.EPOLL_CTL_DEL, lfd, 0)
				el.armListener(li)
			}
			return
		}
		// A loop alone on its listeners has nobody to leave the next
		// connection to: it takes what waits and saves a wake-up per
		// connection, but only while the batch is short. After a slow
		// one (a connect hook that ran long) the rest waits for the next
		// iteration, once this one's lag is known to toobusy.
		if time.Since(el.now) > aloneAcceptFor {
			return
		}
	}
}

// refuse answers a connection we will not serve and closes it.
func refuse(fd int, reply []byte) {
	if reply == nil {
		rawClose(fd)
		return
	}
	rawWrite(fd, reply)
	rawClose(fd)
}

func (el *eventLoop) open(fd int, peer netip.AddrPort, l *listener, li int) {
	s := el.srv
	kind := l.kind
	ip := peer.Addr().Unmap()
	if ok, reply, why := s.admit(ip, kind, el.draining); !ok {
		el.met.refusedAt(li, why)
		refuse(fd, reply)
		return
	}
	if e := rawEpollCtl(el.epfd, unix.EPOLL_CTL_ADD, fd, unix.EPOLLIN|unix.EPOLLRDHUP); e != 0 {
		s.conns.Add(-1)
		if !kind.Proxy {
			s.releaseIP(ip)
		}
		rawClose(fd)
		return
	}
	for fd >= len(el.conns) {
		el.conns = append(el.conns, make([]*epollConn, len(el.conns)+64)...)
	}
	c := newEpollConn(el, fd, peer, l)
	el.opened(c, li)
	c.ipHeld = !kind.Proxy
	el.conns[fd] = c
	el.nconns++
	if kind.Proxy {
		c.proxyWait = true
		el.addTimer(c, timerProxy, el.now.Add(s.opts.ProxyTimeout))
		return
	}
	c.start()
	c.settle()
}

// Load implements plugins.LoadReporter for the connections of this loop.
// LoopLag is the longest batch of work of the current or the previous
// half-second window: how long a new event could have waited.
func (el *eventLoop) Load() plugins.LoadInfo {
	lag := el.lagCur.Load()
	if p := el.lagPrev.Load(); p > lag {
		lag = p
	}
	s := el.srv
	return plugins.LoadInfo{
		LoopLag:     time.Duration(lag),
		PoolQueued:  s.pool.Queued(),
		PoolBusy:    s.pool.Busy(),
		PoolWorkers: s.pool.Workers(),
		Connections: s.conns.Load(),
	}
}

// tick enforces timeouts and resumes accepting after a backoff.
func (el *eventLoop) tick() {
	if late := el.now.Sub(el.nextTick); late > el.batchMax {
		el.batchMax = late
	}
	el.lagPrev.Store(int64(el.batchMax))
	el.lagCur.Store(0)
	el.batchMax = 0
	if el.acceptOff && !el.draining && !el.now.Before(el.acceptResume) {
		if err := el.armListeners(); err != nil {
			el.srv.logAcceptError(err)
		}
	}
	lim := el.srv.limitsNow()
	for ph := range el.lists {
		l := &el.lists[ph]
		for c := l.head; c != nil; {
			next := c.next
			if el.now.Before(lim.deadline(c.ph, c.since, 0)) {
				break // the rest of the list started later
			}
			if el.now.Before(lim.deadline(c.ph, c.since, c.bodyBytes)) {
				c = next // a message that earned more time at data_min_rate
				continue
			}
			el.cut(c)
			c = next
		}
	}
}

// cut ends a connection whose deadline passed: a 421 4.4.2 that says
// which one, or, for one already closing, the end of its wait.
func (el *eventLoop) cut(c *epollConn) {
	if c.ph == phaseClosing {
		// Lingering for the client's FIN, or closing with replies the
		// client does not read: give up on it.
		c.close("closed")
		return
	}
	reply, why := el.srv.timeoutReply(c.ph)
	c.write(reply)
	c.shutdown(why) // before the flush, which must not parse on
	c.flush()
}

// drain stops accepting and closes every connection that is not inside a
// transaction; the others close when their transaction ends.
func (el *eventLoop) drain() {
	el.draining = true
	el.disarmListeners()
	// The server closes the listeners once every loop got here.
	el.srv.drained.Done()
	for _, c := range el.conns {
		if c != nil && !c.closed {
			c.drainCheck()
		}
	}
}

// forceClose ends every connection now, after the graceful timeout.
func (el *eventLoop) forceClose() {
	for _, c := range el.conns {
		if c != nil && !c.closed {
			if !c.closing {
				c.write(el.srv.replyShutdown)
				c.flush()
			}
			c.close("shutdown")
		}
	}
}

// connList is a doubly linked list of connections in the order their
// phase started.
type connList struct{ head, tail *epollConn }

// enter puts c at the end of the list of phase ph (its phase started now).
func (el *eventLoop) enter(c *epollConn, ph uint8) {
	el.unlist(c)
	l := &el.lists[ph]
	c.prev = l.tail
	c.next = nil
	if l.tail != nil {
		l.tail.next = c
	} else {
		l.head = c
	}
	l.tail = c
	c.listed, c.listedIn = true, ph
}

// unlist takes c out of its list.
func (el *eventLoop) unlist(c *epollConn) {
	if !c.listed {
		return
	}
	l := &el.lists[c.listedIn]
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		l.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		l.tail = c.prev
	}
	c.prev, c.next = nil, nil
	c.listed = false
}

// threadName is the loop's thread name, NUL-terminated: "loopmx-loop0"
// and on (the kernel keeps 15 bytes).
func (el *eventLoop) threadName() []byte {
	return append(strconv.AppendInt([]byte("loopmx-loop"), int64(el.idx), 10), 0)
}

// recycle zeroes the connections that finished in this iteration and keeps
// them for the next ones, up to maxFree. One that is still listed or on a
// timer is left to the garbage collector.
func (el *eventLoop) recycle() {
	for i, f := range el.retired {
		el.retired[i] = freeConn{}
		if len(el.free) >= maxFree || f.e.listed || f.e.timerIdx >= 0 || !f.e.closed {
			continue
		}
		*f.e = epollConn{}
		f.clear()
		el.free = append(el.free, f)
	}
	el.retired = el.retired[:0]
}
