package metrics

import "golang.org/x/sys/unix"

// listenQueue reads the accept queue of listening socket fd: for a socket
// in LISTEN, Linux's TCP_INFO gives the queue's length in tcpi_unacked and
// its limit in tcpi_sacked.
func listenQueue(fd int) (n, limit uint32, ok bool) {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil || ti.State != tcpListen {
		return 0, 0, false
	}
	return ti.Unacked, ti.Sacked, true
}

// tcpListen is TCP_LISTEN of linux/tcp_states.h.
const tcpListen = 10
