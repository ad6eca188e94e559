package testkit

import (
	"fmt"
	"net"
)

// FreeLoopbackAddress returns "127.0.0.1:port" with a port that was free a moment ago.
func FreeLoopbackAddress() (string, error) {
	addrs, err := FreeLoopbackAddresses(1)
	if err != nil {
		return "", err
	}
	return addrs[0], nil
}

// FreeLoopbackAddresses returns n distinct "127.0.0.1:port" addresses whose ports were free a
// moment ago.
func FreeLoopbackAddresses(n int) ([]string, error) {
	if n < 1 {
		return nil, fmt.Errorf("finding free ports: asked for %d", n)
	}
	// Every listener stays open until all are chosen, so that no port is handed out twice.
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			_ = l.Close()
		}
	}()
	out := make([]string, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		listeners = append(listeners, l)
		out = append(out, l.Addr().String())
	}
	return out, nil
}
