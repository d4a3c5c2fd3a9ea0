package cli

import (
	"encoding/json"
	"fmt"
	"testing"
)

func TestChunkRequests(t *testing.T) {
	var targets []string
	for i := range 100_000 {
		targets = append(targets, fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255))
	}
	base := map[string]any{"op": "block", "for": "1d", "reason": "feed \"x\"", "partial": true}
	reqs, err := chunkRequests(base, targets, chunkBytes)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for i, r := range reqs {
		if len(r)+1 > 64<<10 {
			t.Fatalf("request %d is %d bytes with its newline: over the daemon's 64 KiB line limit", i, len(r)+1)
		}
		var req struct {
			Op      string   `json:"op"`
			For     string   `json:"for"`
			Reason  string   `json:"reason"`
			Partial bool     `json:"partial"`
			Targets []string `json:"targets"`
		}
		if err := json.Unmarshal(r, &req); err != nil {
			t.Fatalf("request %d is not JSON: %v", i, err)
		}
		if req.Op != "block" || req.For != "1d" || req.Reason != `feed "x"` || !req.Partial || len(req.Targets) == 0 {
			t.Fatalf("request %d: %+v", i, req)
		}
		got = append(got, req.Targets...)
	}
	if len(got) != len(targets) {
		t.Fatalf("%d targets in %d requests, want %d", len(got), len(reqs), len(targets))
	}
	for i := range got {
		if got[i] != targets[i] {
			t.Fatalf("target %d: %s, want %s", i, got[i], targets[i])
		}
	}
	if one, _ := chunkRequests(base, targets[:1], chunkBytes); len(one) != 1 {
		t.Fatalf("one target: %d requests", len(one))
	}
}
