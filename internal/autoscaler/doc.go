// Package autoscaler decides how many instances a function version should
// have, from the number of requests it has had in flight recently. It is
// modelled on Knative's KPA: observations are averaged over a long stable
// window (60s by default) for steady-state decisions and over a short panic
// window (6s) to react to bursts; a burst big enough for the short window to
// ask for at least PanicThreshold times the ready instances starts panic
// mode, in which the count only grows, until a stable window has passed
// without a new burst. Outside panic mode, the count does not fall below
// what the busiest second of the stable window needed, so that bursts that
// recur within the window keep their instances. Scale-up and scale-down are rate limited per
// decision, the result is clamped to the policy's [Min, Max], and a version
// goes to zero instances only after ScaleToZeroGrace without traffic.
//
// The package only computes: it starts no goroutines, reads no clock (every
// method takes the current time) and does no I/O. The caller samples the
// in-flight count (Scaler.Record), asks for a decision on its own ticker
// (Scaler.Decide) and starts or stops instances accordingly.
package autoscaler
