package ai.mvmoe.demo.core

import java.util.concurrent.ExecutorService
import java.util.concurrent.RejectedExecutionException
import java.util.concurrent.atomic.AtomicBoolean

/**
 * The screen's one worker thread, safe to post to from any thread at any time. After [close] (the
 * screen left) a post is refused with `false` instead of throwing: a camera frame converted while the
 * tab switched, or a photo decoded after it, is then dropped, never a RejectedExecutionException on
 * the camera or main thread. Tasks run one at a time in the order posted.
 */
class SerialWorker(private val executor: ExecutorService) {
    private var closed = false
    private val frameInFlight = AtomicBoolean(false)

    /** True while a frame posted with [postFrame] is queued or running. */
    val busy: Boolean get() = frameInFlight.get()

    /** Queues [task]; false (and [task] never runs) once the worker is closed. */
    @Synchronized
    fun post(task: () -> Unit): Boolean {
        if (closed) return false
        return try {
            executor.execute(task)
            true
        } catch (e: RejectedExecutionException) {  // shut down behind our back: behave as closed
            closed = true
            false
        }
    }

    /** Queues one frame's work unless another frame is still queued or running (then it is dropped: false). */
    fun postFrame(task: () -> Unit): Boolean {
        if (!frameInFlight.compareAndSet(false, true)) return false
        val queued = post {
            try {
                task()
            } finally {
                frameInFlight.set(false)
            }
        }
        if (!queued) frameInFlight.set(false)
        return queued
    }

    /**
     * Refuses further posts, runs [last] after everything already queued (on the worker; inline when the
     * worker had already stopped), then lets the thread end. Closing twice runs the second [last] inline.
     */
    @Synchronized
    fun close(last: () -> Unit = {}) {
        if (!post(last)) last()
        closed = true
        executor.shutdown()
    }
}

/**
 * The model a screen runs, handed between the load (on the worker), the screen and the frame tasks.
 * Each load takes a ticket with [begin]; leaving the screen or choosing another model or accelerator
 * retires it with [retire]. A load that finishes after its ticket was retired is told so by [publish]
 * and closes what it loaded; [current] (read by each frame task on the worker) gives only the live
 * resource, so no frame runs on a runner that was closed or superseded. Thread-safe.
 */
class LiveSlot<R : AutoCloseable> {
    private var newest = 0L
    private var live: R? = null
    private var liveTicket = -1L

    /** A ticket for a new load; every older ticket is stale from now on. */
    @Synchronized
    fun begin(): Long = ++newest

    /** Whether [ticket] is still the newest and not retired: the screen may show its results. */
    @Synchronized
    fun isCurrent(ticket: Long): Boolean = ticket == newest

    /**
     * A finished load: makes [resource] the live one and returns true when [ticket] is current; returns
     * false when it is stale, and the caller closes [resource] (it was never shown).
     */
    @Synchronized
    fun publish(ticket: Long, resource: R): Boolean {
        if (ticket != newest) return false
        check(live == null) { "a live resource was never retired" }
        live = resource
        liveTicket = ticket
        return true
    }

    /**
     * Retires [ticket] (leaving the screen, or another model chosen) and returns the resource it
     * published, if any, for the caller to close on the worker, after any frame task already running.
     */
    @Synchronized
    fun retire(ticket: Long): R? {
        if (ticket == newest) newest++
        if (liveTicket != ticket) return null
        return live.also { live = null; liveTicket = -1L }
    }

    /** The live resource, or null while loading, after leaving, or between two models. */
    @Synchronized
    fun current(): R? = live
}

/**
 * Something bound asynchronously that must never be bound after its screen left: CameraX hands over
 * its ProcessCameraProvider in a callback that can run after the preview has left composition, and a
 * bind then would keep the camera open behind another tab. [bind] runs the binding only while the
 * screen is shown and keeps its undo; [dispose] undoes it once, and makes later binds no-ops.
 * Call both on one thread (the main thread).
 */
class LateBinding {
    private var disposed = false
    private var undo: (() -> Unit)? = null

    /** Runs [binding] (which returns how to undo it) unless disposed; true when it ran. */
    fun bind(binding: () -> (() -> Unit)): Boolean {
        if (disposed) return false
        undo?.invoke()
        undo = binding()
        return true
    }

    fun dispose() {
        disposed = true
        undo?.invoke()
        undo = null
    }

    val isDisposed: Boolean get() = disposed
}
