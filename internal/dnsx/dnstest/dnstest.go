// Package dnstest runs DNS servers for the tests of the DNS layer and of
// the plugins that use it: a miekg/dns server on 127.0.0.1 (UDP, and TCP
// on the same port) that answers from records the test gives, counts every
// question, and can hold an answer back until the test lets it go; and a
// silent server that reads questions and never answers. Both stop when
// the test ends.
package dnstest

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// HoldTimeout is the longest a held answer waits for its release, so that
// a test that forgets to release fails instead of hanging.
const HoldTimeout = 20 * time.Second

// Server is a DNS server with a table of records.
type Server struct {
	// Addr is the server's 127.0.0.1:port, for UDP and TCP.
	Addr string

	mu      sync.Mutex
	records map[string][]dns.RR // by lower-case owner name
	rcodes  map[string]int      // names answered with an error code
	soa     dns.RR              // put in negative answers when set
	counts  map[question]int
	holds   map[question]chan struct{}
	total   atomic.Int64
}

type question struct {
	name  string
	qtype uint16
}

// Start runs a server that knows no records: every question gets
// NXDOMAIN until the test adds some.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{records: map[string][]dns.RR{}, rcodes: map[string]int{}, counts: map[question]int{}, holds: map[question]chan struct{}{}}
	pc, l := listenPair(t)
	s.Addr = pc.LocalAddr().String()
	for _, srv := range []*dns.Server{{PacketConn: pc}, {Listener: l}} {
		up := make(chan struct{})
		srv.Handler = dns.HandlerFunc(s.serve)
		srv.NotifyStartedFunc = func() { close(up) }
		go srv.ActivateAndServe()
		<-up
		t.Cleanup(func() { srv.Shutdown() })
	}
	t.Cleanup(s.releaseAll)
	return s
}

// listenPair opens a UDP socket and a TCP listener on one free port of
// 127.0.0.1.
func listenPair(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, l
		}
		pc.Close()
	}
	t.Fatal("dnstest: found no port free for both UDP and TCP")
	return nil, nil
}

// Add adds records in zone file syntax, one a string:
// "mx.example.org. 300 IN A 192.0.2.25". A name without records of the
// type asked but with others gets NODATA.
func (s *Server) Add(t testing.TB, records ...string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range records {
		rr, err := dns.NewRR(r)
		if err != nil || rr == nil {
			t.Fatalf("dnstest: record %q: %v", r, err)
		}
		name := strings.ToLower(rr.Header().Name)
		s.records[name] = append(s.records[name], rr)
	}
}

// Fail makes every question for name get rcode (dns.RcodeServerFailure,
// dns.RcodeRefused, ...).
func (s *Server) Fail(name string, rcode int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rcodes[strings.ToLower(dns.Fqdn(name))] = rcode
}

// SetSOA puts soa (zone file syntax) in the authority section of every
// negative answer, whose TTL it then gives (RFC 2308).
func (s *Server) SetSOA(t testing.TB, soa string) {
	t.Helper()
	rr, err := dns.NewRR(soa)
	if err != nil || rr == nil {
		t.Fatalf("dnstest: SOA %q: %v", soa, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.soa = rr
}

// Hold makes the answers to (name, qtype) wait until release is called
// (or HoldTimeout passes). The question is counted when it arrives.
func (s *Server) Hold(name string, qtype uint16) (release func()) {
	q := question{strings.ToLower(dns.Fqdn(name)), qtype}
	ch := make(chan struct{})
	s.mu.Lock()
	s.holds[q] = ch
	s.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

// releaseAll lets every held answer go, so that no handler outlives the
// test.
func (s *Server) releaseAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for q, ch := range s.holds {
		select {
		case <-ch:
		default:
			close(ch)
		}
		delete(s.holds, q)
	}
}

// Count returns how many questions for (name, qtype) the server got.
func (s *Server) Count(name string, qtype uint16) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[question{strings.ToLower(dns.Fqdn(name)), qtype}]
}

// Total returns how many questions the server got, of every name.
func (s *Server) Total() int64 { return s.total.Load() }

// Counts lists the questions the server got, for failure messages:
// "1.0.0.127.in-addr.arpa. PTR: 1, mx.test. A: 2".
func (s *Server) Counts() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var parts []string
	for q, n := range s.counts {
		parts = append(parts, q.name+" "+dns.TypeToString[q.qtype]+": "+strconv.Itoa(n))
	}
	return strings.Join(parts, ", ")
}

func (s *Server) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := question{strings.ToLower(req.Question[0].Name), req.Question[0].Qtype}
	s.total.Add(1)
	s.mu.Lock()
	s.counts[q]++
	hold := s.holds[q]
	s.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-time.After(HoldTimeout):
		}
	}
	s.answer(m, q)
	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), false)
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

// answer fills m from the table: the records of the type asked, or the
// CNAME at the name and what it points to; NODATA for a name with other
// records; NXDOMAIN for an unknown name.
func (s *Server) answer(m *dns.Msg, q question) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if rcode, ok := s.rcodes[q.name]; ok {
		m.Rcode = rcode
		return
	}
	name := q.name
	for range 8 {
		rrs, ok := s.records[name]
		if !ok {
			if name == q.name {
				m.Rcode = dns.RcodeNameError
			}
			break
		}
		var cname *dns.CNAME
		for _, rr := range rrs {
			switch {
			case rr.Header().Rrtype == q.qtype:
				m.Answer = append(m.Answer, dns.Copy(rr))
			case rr.Header().Rrtype == dns.TypeCNAME:
				cname = rr.(*dns.CNAME)
			}
		}
		if len(m.Answer) > 0 || cname == nil {
			break
		}
		m.Answer = append(m.Answer, dns.Copy(cname))
		name = strings.ToLower(cname.Target)
	}
	if len(m.Answer) == 0 && s.soa != nil {
		m.Ns = append(m.Ns, dns.Copy(s.soa))
	}
}

// Silent is a UDP socket that reads questions and never answers: a
// resolver that is down.
type Silent struct {
	// Addr is the socket's 127.0.0.1:port.
	Addr  string
	reads atomic.Int64
}

// StartSilent opens a Silent server, closed when the test ends.
func StartSilent(t testing.TB) *Silent {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Silent{Addr: pc.LocalAddr().String()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			s.reads.Add(1)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return s
}

// Reads returns how many questions the socket got.
func (s *Silent) Reads() int64 { return s.reads.Load() }

// INI is a dns.ini that sends every question to addr, with timeout per
// try and one attempt: a test that waits for a silent server waits one
// timeout per lookup.
func INI(addr string, timeout time.Duration) string {
	return fmt.Sprintf("servers = %s\ntimeout = %s\nattempts = 1\n", addr, timeout)
}
