package ai.mvmoe.demo.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertNull
import org.junit.Assert.assertSame
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test
import java.util.Collections
import java.util.concurrent.CountDownLatch
import java.util.concurrent.Executors
import java.util.concurrent.RejectedExecutionException
import java.util.concurrent.TimeUnit

/** The Classify screen's threading: worker, live runner and the camera binding, leaving the screen at bad moments. */
class LifecycleTest {
    /** A runner stand-in that fails the way a closed LiteRT/ExecuTorch runner would if used after close(). */
    private class FakeRunner(val name: String) : AutoCloseable {
        var closed = false
        var runs = 0
        fun run() { check(!closed) { "$name ran after close()" }; runs++ }
        override fun close() { check(!closed) { "$name closed twice" }; closed = true }
    }

    private fun worker() = Executors.newSingleThreadExecutor().let { it to SerialWorker(it) }

    @Test
    fun aFrameAfterTheScreenLeftIsDroppedNotACrash() {
        val (ex, w) = worker()
        w.close()
        // the plain executor is what crashed the app: execute() after shutdown() throws on the caller's thread
        assertThrows(RejectedExecutionException::class.java) { ex.execute {} }
        assertFalse(w.post { error("must not run") })
        assertFalse(w.postFrame { error("must not run") })
        assertFalse(w.busy)  // a refused frame does not leave the gate shut
    }

    @Test
    fun closeRunsItsLastTaskAfterWhatIsQueued() {
        val (ex, w) = worker()
        val log = Collections.synchronizedList(mutableListOf<String>())
        val hold = CountDownLatch(1)
        assertTrue(w.post { hold.await(); log += "frame" })
        w.close { log += "close runner" }
        hold.countDown()
        assertTrue(ex.awaitTermination(5, TimeUnit.SECONDS))
        assertEquals(listOf("frame", "close runner"), log)
    }

    @Test
    fun closeRunsInlineWhenTheExecutorStoppedBehindItsBack() {
        val (ex, w) = worker()
        ex.shutdown()
        var ran = false
        assertFalse(w.post {})  // refused, not thrown
        w.close { ran = true }
        assertTrue(ran)
    }

    @Test
    fun framesAreDroppedWhileOneIsInFlightAndTheGateReopens() {
        val (ex, w) = worker()
        val hold = CountDownLatch(1)
        val done = CountDownLatch(2)
        assertTrue(w.postFrame { hold.await(); done.countDown() })
        assertTrue(w.busy)
        assertFalse(w.postFrame { error("dropped frame ran") })
        hold.countDown()
        // a frame that throws reopens the gate too
        while (w.busy) Thread.sleep(1)
        assertTrue(w.postFrame { done.countDown(); error("model failed") })
        assertTrue(done.await(5, TimeUnit.SECONDS))
        w.close()
        assertTrue(ex.awaitTermination(5, TimeUnit.SECONDS))
        assertFalse(w.busy)
    }

    @Test
    fun aLoadThatFinishesAfterTheSwitchIsClosedNotShown() {
        val slot = LiveSlot<FakeRunner>()
        val t1 = slot.begin()
        assertNull(slot.retire(t1))  // model B chosen while A loads: nothing of A's is live yet
        val t2 = slot.begin()
        val a = FakeRunner("A")
        assertFalse(slot.publish(t1, a))  // A's load finishes late: the caller closes it
        assertFalse(slot.isCurrent(t1))
        val b = FakeRunner("B")
        assertTrue(slot.publish(t2, b))
        assertTrue(slot.isCurrent(t2))
        assertSame(b, slot.current())
        // leaving hands B back for closing; frames then find no runner
        assertSame(b, slot.retire(t2))
        assertNull(slot.current())
        assertFalse(slot.isCurrent(t2))
        assertNull(slot.retire(t2))  // retiring twice closes nothing twice
    }

    @Test
    fun retiringAnOlderTicketLeavesTheNewOneAlone() {
        val slot = LiveSlot<FakeRunner>()
        val t1 = slot.begin()
        val t2 = slot.begin()
        val b = FakeRunner("B")
        assertTrue(slot.publish(t2, b))
        assertNull(slot.retire(t1))
        assertTrue(slot.isCurrent(t2))
        assertSame(b, slot.current())
    }

    /**
     * The whole screen, as ClassifyScreen wires it: the load and the frames on the worker, the screen
     * leaving on another thread while the load and a frame are in flight. Every runner is closed once,
     * and none runs after its close.
     */
    @Test
    fun leavingDuringALoadAndAFrameClosesEverythingOnceAndRunsNothingClosed() {
        repeat(50) { round ->
            val (ex, w) = worker()
            val slot = LiveSlot<FakeRunner>()
            val made = Collections.synchronizedList(mutableListOf<FakeRunner>())
            val ticket = slot.begin()
            w.post {
                val r = FakeRunner("load $round").also { made += it }
                if (!slot.publish(ticket, r)) r.close()
            }
            val frames = Thread {
                repeat(20) { w.postFrame { slot.current()?.run() }; Thread.yield() }
            }
            frames.start()
            if (round % 2 == 0) Thread.sleep(1)
            // the screen leaves: retire, close the runner on the worker after any frame in flight, stop
            val live = slot.retire(ticket)
            w.close { live?.close() }
            frames.join()
            assertTrue(ex.awaitTermination(5, TimeUnit.SECONDS))
            assertEquals(1, made.size)
            assertTrue("round $round: the runner was never closed", made.all { it.closed })
            assertFalse(w.post {})
        }
    }

    @Test
    fun theCameraIsNeverBoundAfterThePreviewLeft() {
        val b = LateBinding()
        var bound = 0
        var unbound = 0
        b.dispose()  // the preview left before CameraX handed over its provider
        assertFalse(b.bind { bound++; { unbound++ } })
        assertEquals(0, bound)

        val c = LateBinding()
        assertTrue(c.bind { bound++; { unbound++ } })
        c.dispose()
        c.dispose()
        assertEquals(1 to 1, bound to unbound)  // undone exactly once
        assertTrue(c.isDisposed)
    }
}
