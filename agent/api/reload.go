package api

// ReloadResult is the answer to op reload (SIGHUP does the same): the
// config was valid and is in force, except for the keys listed.
type ReloadResult struct {
	// NeedsRestart lists the keys whose new value is not in force until
	// parryd restarts (their old value stays meanwhile).
	NeedsRestart []string `json:"needs_restart,omitempty"`
	// NotApplied lists the sections a part could not take now, with why
	// ("integrity: ... busy ..."): they keep their old values; reload
	// again.
	NotApplied []string `json:"not_applied,omitempty"`
}
