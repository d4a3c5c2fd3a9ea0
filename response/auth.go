package response

import (
	"fmt"
	"slices"
	"strings"
)

// String renders a sender as "uid=33(www-data)" for decisions and logs.
func (s Sender) String() string {
	if s.User == "" {
		return fmt.Sprintf("uid=%d", s.UID)
	}
	return fmt.Sprintf("uid=%d(%s)", s.UID, s.User)
}

// Authorize says whether a non-admin sender may send signals of kind, from the
// senders list of the config: an entry naming the sender's user or one of its
// groups, listing the kind or "*". Root and the admin group are the agent's
// decision and never reach here. The error wraps ErrUnauthorized.
func (c Config) Authorize(s Sender, kind string) error {
	for _, r := range c.Senders {
		if !r.matches(s) {
			continue
		}
		if slices.Contains(r.Kinds, "*") || slices.Contains(r.Kinds, kind) {
			return nil
		}
	}
	return fmt.Errorf("authorize %s for %q: %w (allowed: %s)", s, kind, ErrUnauthorized, c.allowedKinds(s))
}

func (r SenderRule) matches(s Sender) bool {
	if r.User != "" {
		return s.User == r.User
	}
	return slices.Contains(s.Groups, r.Group)
}

// allowedKinds lists what s may send, for the error message.
func (c Config) allowedKinds(s Sender) string {
	var kinds []string
	for _, r := range c.Senders {
		if r.matches(s) {
			kinds = append(kinds, r.Kinds...)
		}
	}
	if len(kinds) == 0 {
		return "nothing; add the user or a group of it to response.senders in parry.yaml"
	}
	slices.Sort(kinds)
	return strings.Join(slices.Compact(kinds), ", ")
}
