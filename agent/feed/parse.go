package feed

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"unsafe"
)

// Parsing limits.
const (
	// MaxLine is the longest line accepted; a longer one is malformed.
	MaxLine = 1024
	// MaxReported is how many bad lines a Report lists by number.
	MaxReported = 10
	// garbageMin and garbagePercent decide when a feed is mostly garbage:
	// more than garbagePercent % of its data lines malformed, and at least
	// garbageMin of them — or no entry at all beside a malformed line.
	garbageMin     = 8
	garbagePercent = 10
)

// Limits are what a parse refuses.
type Limits struct {
	MinPrefixV4, MinPrefixV6 int // broader entries are refused and counted
	// MaxEntries bounds the entries as listed, before duplicates and
	// covered ones are dropped; more refuse the feed (ErrTooMany). 0: no
	// bound.
	MaxEntries int
}

// BadLine is one refused line: its number (from 1) and why. Text is the
// line quoted and cut to 64 bytes (it is outside text).
type BadLine struct {
	Line   int    `json:"line"`
	Reason string `json:"reason"`
	Text   string `json:"text"`
}

// Report counts what a parse saw.
type Report struct {
	Lines      int       `json:"lines"`         // lines read
	Data       int       `json:"data"`          // lines that were neither blank nor comment
	Entries    int       `json:"entries"`       // entries in the resulting set
	Malformed  int       `json:"malformed"`     // data lines that are not an address or CIDR
	TooBroad   int       `json:"too_broad"`     // entries broader than min_prefix, refused
	Duplicates int       `json:"duplicates"`    // exact repeats (after normalising)
	Covered    int       `json:"covered"`       // entries inside a broader entry of the same feed
	Bad        []BadLine `json:"bad,omitempty"` // the first MaxReported malformed or too broad lines
}

// ErrGarbage is returned when a feed is mostly not addresses (an HTML
// error page, a wrong URL, a truncated or binary file).
var ErrGarbage = errors.New("feed is mostly malformed")

// ErrTooMany is returned when a feed lists more than Limits.MaxEntries.
var ErrTooMany = errors.New("feed lists more than max_entries")

// Parse reads the "lines" format: one IPv4/IPv6 address or CIDR per line;
// `#` and `;` start a comment that runs to the end of the line (Spamhaus
// DROP's "prefix ; SBLnnn", firehol's "# ..." headers); CRLF and blank
// lines are fine; anything else on a line makes it malformed. Malformed
// lines are counted, not fatal, unless the feed is mostly garbage
// (ErrGarbage). Parse reads r once, holding one line at a time.
func Parse(r io.Reader, lim Limits) (*Set, Report, error) {
	var (
		rep Report
		b   builder
	)
	br := bufio.NewReaderSize(r, MaxLine+2)
	bad := func(reason string, line []byte) {
		if len(rep.Bad) < MaxReported {
			if len(line) > 64 {
				line = line[:64]
			}
			rep.Bad = append(rep.Bad, BadLine{Line: rep.Lines, Reason: reason, Text: fmt.Sprintf("%q", line)})
		}
	}
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			rep.Lines++
			rep.Data++
			rep.Malformed++
			bad("line too long", line)
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return nil, rep, fmt.Errorf("read feed: %w", err)
			}
			if err != nil {
				break
			}
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, rep, fmt.Errorf("read feed: %w", err)
		}
		if len(line) > 0 {
			rep.Lines++
			parseLine(line, lim, &b, &rep, bad)
			if lim.MaxEntries > 0 && len(b.v4)+len(b.v6) > lim.MaxEntries {
				return nil, rep, fmt.Errorf("%w (%d) at line %d", ErrTooMany, lim.MaxEntries, rep.Lines)
			}
		}
		if err != nil {
			break
		}
	}
	s, dups, covered := b.build()
	rep.Duplicates, rep.Covered, rep.Entries = dups, covered, s.Len()
	if (rep.Malformed >= garbageMin && rep.Malformed*100 > rep.Data*garbagePercent) ||
		(rep.Entries == 0 && rep.Malformed > 0) {
		return nil, rep, fmt.Errorf("%w: %d of %d data lines malformed (first at line %d)",
			ErrGarbage, rep.Malformed, rep.Data, firstBad(rep))
	}
	return s, rep, nil
}

func firstBad(rep Report) int {
	for _, l := range rep.Bad {
		if l.Reason != reasonBroad {
			return l.Line
		}
	}
	return 0
}

const reasonBroad = "broader than min_prefix"

func parseLine(line []byte, lim Limits, b *builder, rep *Report, bad func(string, []byte)) {
	orig := line
	if i := bytes.IndexAny(line, "#;"); i >= 0 {
		line = line[:i]
	}
	line = bytes.Trim(line, " \t\r\n")
	if len(line) == 0 {
		return
	}
	rep.Data++
	if bytes.ContainsAny(line, " \t\r\n\v\f") {
		rep.Malformed++
		bad("more than one field", orig)
		return
	}
	// The string aliases the read buffer without a copy: netip keeps no
	// part of it (zones, the one part it would keep, are refused) and the
	// parse error that quotes it is dropped.
	p, err := parseEntry(unsafe.String(&line[0], len(line)))
	if err != nil {
		rep.Malformed++
		bad(err.Error(), orig)
		return
	}
	if (p.Addr().Is4() && p.Bits() < lim.MinPrefixV4) || (p.Addr().Is6() && p.Bits() < lim.MinPrefixV6) {
		rep.TooBroad++
		bad(reasonBroad, orig)
		return
	}
	b.add(p)
}

func parseEntry(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.IndexByte(s, '/') >= 0 {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return p, errors.New("not an address or CIDR")
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return p, errors.New("not an address or CIDR")
		}
		if a.Zone() != "" {
			return p, errors.New("zoned address")
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	return Normalize(p)
}
