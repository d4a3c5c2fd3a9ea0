package api

import (
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	const day = 24 * time.Hour
	tests := []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{in: "90s", want: 90 * time.Second},
		{in: "12h", want: 12 * time.Hour},
		{in: "1h30m", want: 90 * time.Minute},
		{in: "7d", want: 7 * day},
		{in: "2w", want: 14 * day},
		{in: "1w2d", want: 9 * day},
		{in: "1d12h", want: 36 * time.Hour},
		{in: "2w3d4h5m", want: 17*day + 4*time.Hour + 5*time.Minute},
		{in: "0s", want: 0},
		{in: "", bad: true},
		{in: "-1h", bad: true},
		{in: "d", bad: true},
		{in: "7", bad: true},
		{in: "1x", bad: true},
		{in: "1d-1h", bad: true},
		{in: "1.5d", bad: true},
		{in: "2d1w", bad: true}, // weeks come first
		{in: "99999999999999w", bad: true},
		{in: " 1h", bad: true},
	}
	for _, tt := range tests {
		got, err := ParseDuration(tt.in)
		if tt.bad {
			if err == nil {
				t.Errorf("ParseDuration(%q) = %v, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestFormatDuration(t *testing.T) {
	for in, want := range map[time.Duration]string{
		90 * time.Second:        "1m30s",
		48 * time.Hour:          "2d",
		36 * time.Hour:          "1d12h0m0s",
		-time.Second:            "0s",
		1500 * time.Millisecond: "2s",
	} {
		if got := FormatDuration(in); got != want {
			t.Errorf("FormatDuration(%v) = %q, want %q", in, got, want)
		}
		if back, err := ParseDuration(FormatDuration(in)); err != nil || (in > 0 && FormatDuration(back) != want) {
			t.Errorf("round trip %v: %v %v", in, back, err)
		}
	}
}
