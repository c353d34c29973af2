package rawlb

// Kinds of packets rawlb originates, each behind its own token bucket, so
// that the balancer is never an amplifier: a flood of spoofed SYNs or
// stray segments gets at most the configured rate of answers, and the
// excess is counted.
const (
	genReset     = iota // RSTs: refused connections, segments of unknown flows, resets of dead flows
	genChallenge        // RFC 5961 challenge ACKs
	genSYNACK           // SYN cookie SYN-ACKs
	numGenKinds
)

var genNames = [numGenKinds]string{"reset", "challenge_ack", "syn_ack"}

// nsPerSec scales token counts so that the bucket works in integers.
const nsPerSec = int64(1e9)

// bucket is a token bucket owned by one worker: no atomics, no lock. Each
// worker gets rate/workers, so the total stays within the configured rate.
// Tokens are kept in units of 1/1e9, refilled from the worker's clock.
type bucket struct {
	rate   int64 // tokens per second
	burst  int64 // most tokens held, in units
	tokens int64 // in units
	last   int64 // clock of the last refill
}

// newBucket returns a bucket allowing rate per second with a burst of a
// second's worth, full. A burst is what a legitimate event brings (3,000
// connects at once against a full table want 2,000 RSTs now, not over two
// seconds of retransmitted SYNs); what makes an amplifier is the rate
// sustained, which stays bounded.
func newBucket(rate int64) bucket {
	if rate <= 0 {
		return bucket{}
	}
	burst := rate * nsPerSec
	return bucket{rate: rate, burst: burst, tokens: burst}
}

// allow takes a token if there is one at now.
func (b *bucket) allow(now int64) bool { return b.allowN(now, 1) }

// allowN takes n tokens if there are that many at now.
func (b *bucket) allowN(now int64, n int64) bool {
	if b.rate == 0 {
		return false
	}
	if elapsed := now - b.last; elapsed > 0 {
		// Cap the elapsed time so the product cannot overflow: a second
		// refills at most rate tokens, beyond the burst anyway.
		b.tokens = min(b.tokens+min(elapsed, nsPerSec)*b.rate, b.burst)
		b.last = now
	}
	if b.tokens < n*nsPerSec {
		return false
	}
	b.tokens -= n * nsPerSec
	return true
}
