package autoscaler

// bucket holds the observations of one wall-clock second.
type bucket struct {
	sec  int64   // Unix second the bucket describes
	sum  float64 // sum of the observations in that second
	peak float64 // the highest of them
	n    int     // how many; 0 means the slot is empty
}

func (b bucket) mean() float64 { return b.sum / float64(b.n) }

// window is a ring of per-second buckets covering the last len(buckets)
// seconds that have been recorded. Its memory is fixed at creation.
type window struct {
	buckets []bucket
	newest  int64 // newest second recorded; meaningful only if any
	any     bool
}

func newWindow(size int) *window {
	return &window{buckets: make([]bucket, max(size, 1))}
}

func (w *window) slot(sec int64) *bucket {
	n := int64(len(w.buckets))
	return &w.buckets[((sec%n)+n)%n]
}

// record adds v to the bucket of second sec. Observations older than the
// ring can hold (relative to the newest one) are dropped.
func (w *window) record(sec int64, v float64) {
	if w.any && sec <= w.newest-int64(len(w.buckets)) {
		return
	}
	b := w.slot(sec)
	// The slot either already holds sec, or holds an older second that has
	// left the ring; it cannot hold a newer one (see the check above).
	if b.n == 0 || b.sec != sec {
		*b = bucket{sec: sec}
	}
	b.sum += v
	b.peak = max(b.peak, v)
	b.n++
	if !w.any || sec > w.newest {
		w.newest, w.any = sec, true
	}
}

// mean returns the mean of the per-second averages of the seconds in
// (now-span, now] that have observations, and how many such seconds there
// are. Seconds without observations are unknown, not zero, so the result
// does not depend on how often the caller samples, and a history shorter
// than span is averaged over only the time it covers.
func (w *window) mean(now int64, span int) (float64, int) {
	var total float64
	k := 0
	for _, b := range w.buckets {
		if b.n > 0 && b.sec <= now && b.sec > now-int64(span) {
			total += b.mean()
			k++
		}
	}
	if k == 0 {
		return 0, 0
	}
	return total / float64(k), k
}

// latest returns the average of the newest second in (now-span, now] that
// has observations, or 0 if there is none.
func (w *window) latest(now int64, span int) float64 {
	var best *bucket
	for i := range w.buckets {
		b := &w.buckets[i]
		if b.n > 0 && b.sec <= now && b.sec > now-int64(span) && (best == nil || b.sec > best.sec) {
			best = b
		}
	}
	if best == nil {
		return 0
	}
	return best.mean()
}

// highest returns the highest of of(b) over the seconds b in
// (now-span, now] that have observations, or 0: the busiest second's
// average (bucket.mean), or the highest observation (its peak).
func (w *window) highest(now int64, span int, of func(bucket) float64) float64 {
	m := 0.0
	for _, b := range w.buckets {
		if b.n > 0 && b.sec <= now && b.sec > now-int64(span) {
			m = max(m, of(b))
		}
	}
	return m
}

// resized returns a window of the given size holding the buckets of w that
// fit in it (the newest ones).
func (w *window) resized(size int) *window {
	nw := newWindow(size)
	nw.newest, nw.any = w.newest, w.any
	for _, b := range w.buckets {
		if b.n > 0 && b.sec > w.newest-int64(len(nw.buckets)) {
			*nw.slot(b.sec) = b
		}
	}
	return nw
}

// shift moves every bucket d seconds back in time, so that a history
// recorded before the clock was set back d seconds goes on from where the
// clock now is.
func (w *window) shift(d int64) {
	nw := newWindow(len(w.buckets))
	nw.newest, nw.any = w.newest-d, w.any
	for _, b := range w.buckets {
		if b.n > 0 {
			b.sec -= d
			*nw.slot(b.sec) = b
		}
	}
	*w = *nw
}
