package sqlite

import (
	"errors"
	"strconv"
	"strings"

	"github.com/sqldlm/sqldlm/dialect"
)

// coder is implemented by modernc.org/sqlite's *Error; matching on the
// method keeps this package free of the driver import.
type coder interface {
	error
	Code() int
}

// SQLite result codes (https://sqlite.org/rescode.html).
const (
	codeError                = 1
	codeBusy                 = 5
	codeLocked               = 6
	codeBusySnapshot         = 517 // a read transaction's snapshot is older than the database: it cannot write
	codeConstraintPrimaryKey = 1555
	codeConstraintUnique     = 2067
)

// ClassifyError is the one place that looks at SQLite result codes.
func (*sqliteDialect) ClassifyError(err error) error {
	if err == nil {
		return nil
	}
	var de *dialect.Error
	if errors.As(err, &de) {
		return err
	}
	var c coder
	if errors.As(err, &c) {
		code := c.Code()
		var kind error
		switch {
		case code == codeConstraintUnique || code == codeConstraintPrimaryKey:
			kind = dialect.ErrUniqueViolation
		case code == codeBusySnapshot:
			// Waiting does not help: the transaction read an older snapshot
			// than another connection has since committed, so retrying the
			// whole transaction is what does, as for a serialization failure.
			kind = dialect.ErrSerialization
		case code&0xff == codeBusy || code&0xff == codeLocked:
			kind = dialect.ErrLockTimeout
		case code&0xff == codeError && strings.Contains(c.Error(), "no such table"):
			kind = dialect.ErrUndefinedTable
		default:
			return err
		}
		return dialect.NewError(kind, strconv.Itoa(code), err)
	}
	if dialect.IsConnectionError(err) {
		return dialect.NewError(dialect.ErrConnection, "", err)
	}
	return err
}
