// Package integrity watches files: a baseline, a parallel scanner, a
// real-time watcher and permission rules. Findings become signals of kind
// integrity_violation for the response policy.
package integrity

// Config is the `integrity:` section of parry.yaml. The zero value means the
// built-in defaults.
type Config struct {
}
