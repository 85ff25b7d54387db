package proxyproto_test

import (
	"errors"
	"fmt"

	"loopmx/proxyproto"
)

// The event loop calls Parse after every read with everything read so far.
func ExampleParse() {
	reads := []string{"PROXY TCP4 192.0.2.1 ", "198.51.100.2 56324 25\r\nEHLO client.example\r\n"}
	var buf []byte
	for _, r := range reads {
		buf = append(buf, r...)
		h, n, err := proxyproto.Parse(buf)
		switch {
		case errors.Is(err, proxyproto.ErrNeedMore):
			fmt.Println("waiting:", err)
		case err != nil:
			fmt.Println("closing:", err)
		default:
			fmt.Println("client", h.Source, "via", h.Dest)
			fmt.Printf("SMTP starts with %q\n", buf[n:])
		}
	}

	// A client that skips the header is refused at its first byte.
	_, _, err := proxyproto.Parse([]byte("E"))
	fmt.Println("closing:", err)

	// Output:
	// waiting: proxyproto: incomplete header
	// client 192.0.2.1:56324 via 198.51.100.2:25
	// SMTP starts with "EHLO client.example\r\n"
	// closing: proxyproto: not a PROXY protocol header
}
