package netns

import "testing"

func TestPairConnectivity(t *testing.T) {
	p := NewPair(t)
	if !p.Peer.Ping(p.HostV4) {
		t.Fatal("peer cannot ping host over IPv4")
	}
	if !p.Peer.Ping(p.HostV6) {
		t.Fatal("peer cannot ping host over IPv6")
	}
	p.Host.ServeTCP(t, 8080)
	if !p.Peer.CanConnect(p.HostV4, 8080) {
		t.Fatal("peer cannot connect to host:8080 over IPv4")
	}
	if !p.Peer.CanConnect(p.HostV6, 8080) {
		t.Fatal("peer cannot connect to host:8080 over IPv6")
	}
	if p.Peer.CanConnect(p.HostV4, 8081) {
		t.Fatal("connect to a closed port succeeded")
	}
	c := p.Host.Conn(t)
	if _, err := c.ListTables(); err != nil {
		t.Fatalf("list tables in test namespace: %v", err)
	}
}
