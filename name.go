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
