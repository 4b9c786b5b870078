package test

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSlowPeersCostNothing: 40 connections that announce a PKIOperation
// body and never send it (from another address, 127.0.0.2) leave a real
// enrolment with scepclient answered within 2 s, with the default limits;
// the idle ones are refused past the per-address cap or answered 408 at the
// body deadline, never given a processing slot.
func TestSlowPeersCostNothing(t *testing.T) {
	s := newServer(t)
	challenge := s.challenge("alice@example.com", "phone")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
	for i := 0; i < 40; i++ {
		c, err := d.Dial("tcp", s.httpAddr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		fmt.Fprintf(c, "POST /scep?operation=PKIOperation HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-pki-message\r\nContent-Length: 5000\r\n\r\n0123456789", s.httpAddr)
	}
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	mustOK(t, "a real enrolment beside 40 slow peers", s.scepclient(filepath.Join(t.TempDir(), "d"), challenge))
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("the real enrolment took %s beside 40 slow peers, want under 2 s", took)
	}
	// What the slow peers got.
	var refused, timedOut int
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 64)
		n, _ := c.Read(b)
		switch line := string(b[:n]); {
		case strings.Contains(line, " 429 "):
			refused++
		case strings.Contains(line, " 408 "):
			timedOut++
		default:
			t.Errorf("a slow peer got %q", line)
		}
	}
	if refused+timedOut != 40 || timedOut > 16 {
		t.Errorf("slow peers: %d refused at once, %d timed out (at most 16 per address may wait for their body)", refused, timedOut)
	}
}
