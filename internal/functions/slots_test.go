package functions

import (
	"context"
	"errors"
	"testing"
	"time"
)

// queue has owner wait for a slot of b, and returns a channel that gets
// the owner's name once it has one; it returns after the wait began.
func queue(t *testing.T, b *buildSlots, owner string, got chan<- string) {
	t.Helper()
	b.mu.Lock()
	n := len(b.waiting)
	b.mu.Unlock()
	go func() {
		if err := b.acquire(context.Background(), owner); err != nil {
			t.Error(err)
		}
		got <- owner
	}()
	waitQueued(b, n+1)
}

// waitQueued waits until n wait for a slot of b.
func waitQueued(b *buildSlots, n int) {
	for {
		b.mu.Lock()
		m := len(b.waiting)
		b.mu.Unlock()
		if m >= n {
			return
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func TestBuildSlotsShareOutAmongUsers(t *testing.T) {
	tests := []struct {
		name   string
		slots  int
		holds  []string // given slots at once, in this order
		queued []string // then waiting, in this order
		// The order the waiters get slots as the holders, then they,
		// release theirs, each in the order it got its slot.
		want []string
	}{
		{"one user's queue does not stand before another's deploy", 1,
			[]string{"a"}, []string{"a", "a", "a", "b"}, []string{"b", "a", "a", "a"}},
		{"users take turns", 1,
			[]string{"a"}, []string{"a", "a", "b", "b", "c"}, []string{"b", "c", "a", "b", "a"}},
		{"the user holding fewer goes first", 2,
			[]string{"a", "a"}, []string{"a", "b", "b"}, []string{"b", "a", "b"}},
		{"a user alone takes turns with itself", 1,
			[]string{"a"}, []string{"a", "a"}, []string{"a", "a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBuildSlots(tt.slots)
			held := append([]string(nil), tt.holds...)
			for _, o := range tt.holds {
				if err := b.acquire(context.Background(), o); err != nil {
					t.Fatal(err)
				}
			}
			got := make(chan string, len(tt.queued))
			for _, o := range tt.queued {
				queue(t, b, o, got)
			}
			var order []string
			for len(order) < len(tt.want) {
				b.release(held[0])
				held = held[1:]
				o := <-got
				order = append(order, o)
				held = append(held, o)
			}
			for i := range tt.want {
				if order[i] != tt.want[i] {
					t.Fatalf("slots went to %v, want %v", order, tt.want)
				}
			}
			for _, o := range held {
				b.release(o)
			}
			if b.free != tt.slots || len(b.held) != 0 || len(b.last) != 0 {
				t.Fatalf("after every release: %d free, held %v, last %v", b.free, b.held, b.last)
			}
		})
	}
}

func TestBuildSlotsCanceledWait(t *testing.T) {
	b := newBuildSlots(1)
	if err := b.acquire(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- b.acquire(ctx, "b") }()
	waitQueued(b, 1)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled wait: %v", err)
	}
	b.release("a")
	if b.free != 1 || len(b.waiting) != 0 || len(b.held) != 0 || len(b.last) != 0 {
		t.Fatalf("after the release: %d free, %d waiting, held %v, last %v", b.free, len(b.waiting), b.held, b.last)
	}
}

// A wait whose context ends as it is given the slot passes the slot on.
func TestBuildSlotsGivenAsCanceled(t *testing.T) {
	for range 200 {
		b := newBuildSlots(1)
		_ = b.acquire(context.Background(), "a")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- b.acquire(ctx, "b") }()
		waitQueued(b, 1)
		go cancel()
		b.release("a")
		if err := <-done; err == nil {
			b.release("b")
		}
		if b.free != 1 || len(b.held) != 0 || len(b.last) != 0 {
			t.Fatalf("%d free, held %v, last %v", b.free, b.held, b.last)
		}
	}
}
