package response

// Config is the `response:` section of parry.yaml. The zero value means the
// built-in default policy.
type Config struct {
}
