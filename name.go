package sqldlm

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// NameMaxBytes is the longest lock name accepted.
const NameMaxBytes = 255

// ValidateName returns an error wrapping ErrInvalidName unless name is a
// valid lock name: 1 to 255 bytes of valid UTF-8 without NUL bytes. Names
// are compared byte by byte on every dialect: case, trailing spaces and
// Unicode normalization all make different names.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: the name is empty", ErrInvalidName)
	case len(name) > NameMaxBytes:
		return fmt.Errorf("%w: the name is %d bytes long, over the limit of %d", ErrInvalidName, len(name), NameMaxBytes)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: %q is not valid UTF-8", ErrInvalidName, name)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("%w: %q contains a NUL byte", ErrInvalidName, name)
	}
	return nil
}

// PayloadMaxBytes is the longest payload accepted.
const PayloadMaxBytes = 1024

// ValidatePayload returns an error wrapping ErrInvalidPayload unless p is
// at most 1024 bytes of valid UTF-8 without NUL bytes.
func ValidatePayload(p string) error {
	switch {
	case len(p) > PayloadMaxBytes:
		return fmt.Errorf("%w: %d bytes, over the limit of %d", ErrInvalidPayload, len(p), PayloadMaxBytes)
	case !utf8.ValidString(p):
		return fmt.Errorf("%w: %q is not valid UTF-8", ErrInvalidPayload, p)
	case strings.IndexByte(p, 0) >= 0:
		return fmt.Errorf("%w: %q contains a NUL byte", ErrInvalidPayload, p)
	}
	return nil
}

// LockOption sets an option of one Lock, TryLock or Do call.
type LockOption func(*lockOptions)

type lockOptions struct {
	payload string
}

// WithPayload stores a short text with the hold: what the holder is doing
// ("resize volume-42, step 3"). It shows in Client.Locks, sqldlm locks
// --output json and sqldlm_holders_view, and is handed to whoever takes the
// lock over if the holder dies. At most 1024 bytes of UTF-8; change it
// while holding with Lock.SetPayload.
func WithPayload(p string) LockOption { return func(o *lockOptions) { o.payload = p } }
