package api

import "time"

// FeedInfo is one configured feed as `parry feed list` shows it (op
// feed_list; docs/feeds.md).
type FeedInfo struct {
	Name        string    `json:"name"`
	Source      string    `json:"source"`                // its url or path
	Entries     int       `json:"entries"`               // entries of the last good state
	Entries4    int       `json:"entries_v4"`            //
	Entries6    int       `json:"entries_v6"`            //
	LastRefresh time.Time `json:"last_refresh,omitzero"` // last attempt, good or not
	LastSuccess time.Time `json:"last_success,omitzero"`
	LastChange  time.Time `json:"last_change,omitzero"`
	Next        time.Time `json:"next,omitzero"`
	LastError   string    `json:"last_error,omitempty"` // empty after a success
	Failures    int       `json:"failures"`             // consecutive failed refreshes
	Stale       bool      `json:"stale"`                // failing for longer than max_stale: entries no longer renewed

	// The counts of the last parse.
	Lines      int           `json:"lines"`
	Malformed  int           `json:"malformed"`
	TooBroad   int           `json:"too_broad"`
	Duplicates int           `json:"duplicates"`
	Covered    int           `json:"covered"`
	Bad        []FeedBadLine `json:"bad,omitempty"` // the first malformed or too broad lines

	// LastApply is what the last refresh applied through the decision
	// path (nil before the first since parryd started).
	LastApply *FeedApply `json:"last_apply,omitempty"`
}

// FeedBadLine is one refused line of a feed (outside text: quoted, cut).
type FeedBadLine struct {
	Line   int    `json:"line"`
	Reason string `json:"reason"`
	Text   string `json:"text"`
}

// FeedApply counts what one refresh did to the blocks.
type FeedApply struct {
	At      time.Time `json:"at"`
	Added   int       `json:"added"`   // new blocks
	Renewed int       `json:"renewed"` // expiry moved to now + for
	Kept    int       `json:"kept"`    // already blocked at least as long, or an admin's: left as they are
	Lifted  int       `json:"lifted"`  // removed entries whose block was the feed's own
	Others  int       `json:"others"`  // removed entries blocked by another cause: left
	Carved  int       `json:"carved"`  // entries overlapping the allowlist, own addresses or reserved ranges: blocked minus those
	// Refused are the entries the guard refused, by code: allowlisted,
	// own_address, loopback ..., and overlap (an entry overlapping an
	// active CIDR block of another length).
	Refused map[string]int    `json:"refused,omitempty"`
	Example map[string]string `json:"refused_example,omitempty"` // one message per code
	Error   string            `json:"error,omitempty"`           // the apply failed: nothing changed
}

// FeedList is the answer of op feed_list.
type FeedList struct {
	Feeds []FeedInfo `json:"feeds"`
}
