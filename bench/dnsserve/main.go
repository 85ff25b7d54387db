// Command loopmx-dnsserve answers DNS questions on 127.0.0.1 from a list
// of records, for benchmarks of the plugins that ask the DNS (fcrdns,
// spf, dkim, dmarc) without the internet: scripts/bench-auth.sh starts
// it. Every record of the asked name and type is answered (with the
// CNAME of the name when there is one); a name with records of other
// types only gets an empty answer (NODATA), any other name NXDOMAIN.
//
// Usage: loopmx-dnsserve -listen 127.0.0.1:PORT RECORDS-FILE
// (one record a line in zone-file syntax, "#" starts a comment).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/miekg/dns"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:5353", "UDP address to answer on (loopback only)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: loopmx-dnsserve -listen 127.0.0.1:PORT RECORDS-FILE")
		os.Exit(2)
	}
	if h, _, err := net.SplitHostPort(*listen); err != nil || !net.ParseIP(h).IsLoopback() {
		fmt.Fprintln(os.Stderr, "loopmx-dnsserve: -listen must be a loopback address and port")
		os.Exit(2)
	}
	zone, err := load(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "loopmx-dnsserve:", err)
		os.Exit(1)
	}
	srv := &dns.Server{Addr: *listen, Net: "udp", Handler: zone}
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, "loopmx-dnsserve:", err)
		os.Exit(1)
	}
}

// records holds every record by lower-case owner name.
type records map[string][]dns.RR

func load(path string) (records, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	z := records{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		rr, err := dns.NewRR(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		name := strings.ToLower(rr.Header().Name)
		z[name] = append(z[name], rr)
	}
	return z, sc.Err()
}

func (z records) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) == 1 {
		q := req.Question[0]
		have, ok := z[strings.ToLower(q.Name)]
		if !ok {
			m.Rcode = dns.RcodeNameError
		}
		for _, rr := range have {
			if t := rr.Header().Rrtype; t == q.Qtype || t == dns.TypeCNAME {
				m.Answer = append(m.Answer, rr)
			}
		}
	}
	w.WriteMsg(m)
}
