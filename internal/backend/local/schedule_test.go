package local

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
)

// A scheduled run whose context is canceled (the scheduler closing at
// shutdown) says so, not "timeout": it neither failed nor ran out of
// its time.
func TestScheduledRunCanceledIsNotATimeout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // read nothing, answer nothing: a handler still running
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	err = runScheduled(ctx, path, "* * * * *", time.Now())
	if err == nil {
		t.Fatal("no error")
	}
	if errors.Is(err, errdefs.ErrTimeout) {
		t.Errorf("canceled (not out of time): %v", err)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("the error does not say it was canceled: %v", err)
	}
}
