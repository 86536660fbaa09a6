package testregistry

import (
	"sync"

	"github.com/sirupsen/logrus"
)

var quietLogs sync.Once

// quiet keeps distribution from flooding test output. It logs through the
// standard logrus logger (there is no per-app logger we can reach): every
// request at info, and every 4xx, such as the 404 of each HEAD a push
// starts with, at error. Raising the level to warn (as tests want) is not
// enough, so a formatter also drops distribution's entries (they all carry
// the "go.version" field its default logger adds) unless they are errors
// about something other than a client-side 4xx. Everything else logged
// through logrus is formatted as before.
func quiet() {
	quietLogs.Do(func() {
		if logrus.GetLevel() > logrus.WarnLevel {
			logrus.SetLevel(logrus.WarnLevel)
		}
		std := logrus.StandardLogger()
		std.SetFormatter(&dropRoutine{next: std.Formatter})
	})
}

type dropRoutine struct{ next logrus.Formatter }

func (f *dropRoutine) Format(e *logrus.Entry) ([]byte, error) {
	if _, fromRegistry := e.Data["go.version"]; fromRegistry {
		if e.Level > logrus.ErrorLevel {
			return nil, nil
		}
		if s, ok := e.Data["http.response.status"].(int); ok && s < 500 {
			return nil, nil
		}
	}
	return f.next.Format(e)
}
